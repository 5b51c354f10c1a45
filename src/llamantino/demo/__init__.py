"""The demo's stand-ins: a small English-trained base model and a small translator."""
