"""Helpers first written for test_speed.py that other test modules use too: broken_backend."""

import torch


def broken_backend(calls):
    """A torch.compile backend that fails as a machine without a C compiler makes inductor fail."""
    def backend(gm, example_inputs):
        calls.append(torch.is_grad_enabled())
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
    return backend
