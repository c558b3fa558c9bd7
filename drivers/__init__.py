"""Hardware drivers: each part behind one small interface, with a real and a simulated backend."""
