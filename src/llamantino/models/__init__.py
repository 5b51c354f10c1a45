"""Models and tokenizers per family: loading, generation, merging adapters, safetensors folders."""
