import os
import tempfile

import pytest
import torch

# Tests never touch the network or the user's cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PROJECTED_GRPO_CACHE", tempfile.mkdtemp(prefix="pgrpo-test-cache-"))
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="pgrpo-test-hf-datasets-"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny():
    """A fresh tiny random-weight model and its byte-level tokenizer."""
    from projected_grpo.models import load_model

    return load_model("tiny")


@pytest.fixture
def tiny_adapter(tiny):
    from projected_grpo.adapter import SVDAdapter
    from projected_grpo.config import DEFAULT_TARGETS

    model, tok = tiny
    return model, tok, SVDAdapter.attach(model, DEFAULT_TARGETS)
