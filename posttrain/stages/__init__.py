"""The stages a user runs (SFT, OPD, the demo), each a driver over the engines and the training core."""
