"""The int8 CUDA path (torchao weight-only). Needs an NVIDIA GPU and `pip install -e '.[gpu]'`:
run with `pytest -m gpu`. CI does not select it."""

from __future__ import annotations

import pytest
import torch

from gateway.model_server.loading import load_model

pytestmark = pytest.mark.gpu


@pytest.fixture()
def cuda() -> None:
    if not torch.cuda.is_available():
        pytest.fail("the gpu marker was selected on a machine without CUDA")


def test_int8_on_cuda_generates_like_fp16(cuda, demo_dir):
    reference = load_model(demo_dir, "none", "cuda")
    quantized = load_model(demo_dir, "int8", "cuda")
    assert quantized.device == "cuda"
    for prompt in ["Hello", "你好，今天天气怎么样？"]:
        ids = reference.tokenizer(prompt, return_tensors="pt").to("cuda")
        with torch.inference_mode():
            a = reference.model.generate(**ids, max_new_tokens=8, do_sample=False)
            b = quantized.model.generate(**ids, max_new_tokens=8, do_sample=False)
        assert a[0, :4].tolist() == b[0, :4].tolist(), prompt
