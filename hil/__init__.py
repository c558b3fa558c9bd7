"""The hardware-in-the-loop rig: the whole gate, end to end, scripted."""
