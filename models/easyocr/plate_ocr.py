"""gate-agent plate recogniser: a convolution-only CTC network (no recurrent layer).

easyocr imports this file as a custom recognition network
(`recog_network="plate_ocr"`) and calls Model(input_channel, output_channel,
hidden_size, num_class); models/train.py trains the very same class and
models/export.py writes it to ONNX for OpenCV's dnn module. Input: grey crops,
1 x 32 x 128, scaled to [-1, 1]; output (batch, 32 steps, num_class), class 0
is the CTC blank.
"""
import torch
from torch import nn


def _conv(cin, cout, kernel=3, padding=1):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Model(nn.Module):
    def __init__(self, input_channel=1, output_channel=128, hidden_size=0, num_class=74):
        super().__init__()
        c = output_channel
        self.features = nn.Sequential(
            _conv(input_channel, c // 8), nn.MaxPool2d(2),             # 16 x 64
            _conv(c // 8, c // 4), nn.MaxPool2d(2),                    # 8 x 32
            _conv(c // 4, c // 2), _conv(c // 2, c // 2),
            nn.MaxPool2d((2, 1)),                                      # 4 x 32
            _conv(c // 2, c),
            _conv(c, c, kernel=(4, 1), padding=0),                     # 1 x 32
            _conv(c, c, kernel=(1, 3), padding=(0, 1)),
        )
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(c, num_class, 1)

    def forward(self, input, text=None):
        y = self.classifier(self.dropout(self.features(input)))  # B, classes, 1, T
        return y.squeeze(2).permute(0, 2, 1)
