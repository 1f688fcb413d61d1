"""`nemotron-engine convert`: exact weights, a complete config, clear refusals, no half-written output."""
import hashlib
import io
import json
import subprocess
import sys
import tarfile

import pytest
import torch
import yaml
from safetensors.torch import load_file

import models

CLI = [sys.executable, "-m", "nemotron_engine.cli"]


@pytest.fixture(scope="module")
def converted():
    return models.nemo_model("nemotron_like")


@pytest.fixture(scope="module")
def bias_bn():
    return models.nemo_model("bias_bn_xscale")


def _nemo_members(path):
    with tarfile.open(path, "r:") as tar:
        cfg = yaml.safe_load(tar.extractfile(next(m for m in tar if m.name.endswith("model_config.yaml"))))
        raw = tar.extractfile(next(m for m in tar if m.name.endswith("model_weights.ckpt"))).read()
    return cfg, torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def _bytes(t):
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


@pytest.mark.parametrize("which", ["nemotron_like", "bias_bn_xscale", "hybrid", "prompt_rnnt", "eou"])
def test_weights_round_trip_bit_exact(which):
    _, nemo_path, out = models.nemo_model(which)
    _, sd = _nemo_members(nemo_path)
    eng = load_file(str(out / "model.safetensors"))
    by_bytes = {}
    for k, t in eng.items():
        by_bytes.setdefault((_bytes(t), t.dtype), []).append(k)
    skipped = ("num_batches_tracked", "pos_enc.pe")
    used = set()
    for k, t in sd.items():
        if any(s in k for s in skipped):
            continue
        hits = by_bytes.get((_bytes(t), t.dtype))
        assert hits, f"NeMo tensor {k} {tuple(t.shape)} has no bit-identical engine tensor"
        used.update(hits)
    assert used == set(eng), f"engine tensors not from NeMo: {sorted(set(eng) - used)[:5]}"
    # spot checks of the name map, independent of the converter's table
    L = "encoder.layers.1."
    assert torch.equal(eng["layers.1.att.wq"], sd[L + "self_attn.linear_q.weight"])
    assert torch.equal(eng["layers.1.att.wpos"], sd[L + "self_attn.linear_pos.weight"])
    assert torch.equal(eng["layers.1.conv.dw.weight"], sd[L + "conv.depthwise_conv.weight"][:, 0, :])
    assert torch.equal(eng["layers.1.conv.pw1.weight"], sd[L + "conv.pointwise_conv1.weight"][:, :, 0])
    out_key = "joint.joint_net.2.weight" if "joint.joint_net.2.weight" in sd else "joint.joint_net.1.weight"
    assert torch.equal(eng["joint.out.weight"], sd[out_key])
    assert torch.equal(eng["decoder.embed"], sd["decoder.prediction.embed.weight"])


def test_config_complete(converted, bias_bn):
    for (model, nemo_path, out), (bias, norm, xs) in ((converted, (False, "layer_norm", False)),
                                                      (bias_bn, (True, "batch_norm", True))):
        cfg = json.loads((out / "config.json").read_text())
        enc = model.cfg.encoder
        assert cfg["att_context_size"] == [list(p) for p in enc.att_context_size]
        assert cfg["d_model"] == enc.d_model and cfg["n_layers"] == enc.n_layers and cfg["n_heads"] == enc.n_heads
        assert cfg["n_mels"] == model.cfg.preprocessor.features
        assert cfg["vocab_size"] == model.tokenizer.vocab_size and cfg["blank_id"] == cfg["vocab_size"]
        assert cfg["max_symbols"] == 10
        assert (cfg["use_bias"], cfg["conv_norm_type"], cfg["xscaling"]) == (bias, norm, xs)
        assert cfg["pred_rnn_layers"] == model.cfg.decoder.prednet.pred_rnn_layers
        assert cfg["source_file"] == nemo_path.name
        assert cfg["source_sha256"] == hashlib.sha256(nemo_path.read_bytes()).hexdigest()
        assert (out / "tokenizer.model").read_bytes()[:4] == (models.tokenizer_dir() / "tokenizer.model").read_bytes()[:4]


def _rewrite(src, dst, edit):
    """Copy a .nemo tar, passing its model_config.yaml through edit(dict)."""
    with tarfile.open(src, "r:") as tin, tarfile.open(dst, "w:") as tout:
        for m in tin:
            data = tin.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("model_config.yaml"):
                cfg = yaml.safe_load(data)
                edit(cfg)
                data = yaml.safe_dump(cfg).encode()
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)


def _run_convert(src, out):
    return subprocess.run(CLI + ["convert", str(src), str(out)], capture_output=True, text=True, timeout=300)


def _set(path, value):
    def edit(cfg):
        node = cfg
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return edit


@pytest.mark.parametrize("key,value,expect", [
    ("joint", KeyError, "CTC-only"),
    ("encoder.self_attention_model", "rel_pos_local_attn", "rel_pos_local_attn"),
    ("encoder.att_context_style", "regular", "regular"),
    ("encoder.causal_downsampling", False, "causal_downsampling"),
    ("encoder.subsampling", "striding", "striding"),
    ("encoder.subsampling_factor", 4, "subsampling_factor"),
    ("encoder.conv_context_size", None, "conv_context_size"),
    ("encoder.att_context_size", [[70, 13], [64, 6]], "att_context_size"),
    ("preprocessor.normalize", "per_feature", "per_feature"),
    ("decoder._target_", "nemo.collections.asr.modules.StatelessTransducerDecoder", "StatelessTransducerDecoder"),
], ids=lambda x: str(x).split(".")[-1][:24])
def test_refuses_unsupported(converted, tmp_path, key, value, expect):
    src = tmp_path / "bad.nemo"
    _rewrite(converted[1], src, _set(key, value))
    out = tmp_path / "out"
    r = _run_convert(src, out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expect in lines[0] and key.split(".")[0] in lines[0], lines[0]
    assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir()), "temporary output left behind"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing", "empty"])
def test_corrupt_file_one_line_error(converted, tmp_path, damage):
    data = converted[1].read_bytes()
    src = tmp_path / "damaged.nemo"
    if damage == "truncated":
        src.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "garbage":
        src.write_bytes(bytes(range(256)) * 100)
    elif damage == "empty":
        src.write_bytes(b"")
    out = tmp_path / "out"
    r = _run_convert(src, out)
    assert r.returncode == 2, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(src) in lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ([src.name] if damage != "missing" else [])


def test_existing_output_needs_force(converted, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = _run_convert(converted[1], out)
    assert r.returncode == 2 and "--force" in r.stderr
    assert (out / "keep.txt").exists()
    r = subprocess.run(CLI + ["convert", "--force", str(converted[1]), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]


def test_progress_for_large_checkpoints(converted, tmp_path, monkeypatch, capsys):
    """Large members (the real checkpoint is 2.5 GB) report progress on stderr; small ones stay quiet."""
    import nemotron_engine.weights.convert as conv

    conv.convert(converted[1], tmp_path / "quiet")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(conv, "PROGRESS_MIN_BYTES", 1)
    conv.convert(converted[1], tmp_path / "loud")
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("hashing:") for line in err)
    assert any(line.startswith("model_weights.ckpt:") and line.endswith("MiB") for line in err)


# ---- the model family: prompt-conditioned and end-of-utterance checkpoints ----------------------------------------
def test_family_config():
    """A prompt checkpoint's MLP, prompt width, language dictionary, left context 56 and five lookaheads, and its
    1200-piece vocabulary; an EOU checkpoint's <EOU> / <EOB> ids, looked up by piece (they are not the last ids)."""
    model, _, out = models.nemo_model("prompt_rnnt")
    cfg = json.loads((out / "config.json").read_text())
    md = model.cfg.model_defaults
    assert cfg["model_class"] == "EncDecRNNTBPEModelWithPrompt"
    assert cfg["num_prompts"] == md.num_prompts == 8
    assert cfg["prompt_dictionary"] == dict(md.prompt_dictionary) and cfg["default_language"] == "auto"
    assert cfg["att_context_size"] == [[56, 13], [56, 6], [56, 3], [56, 1], [56, 0]]
    assert cfg["vocab_size"] == model.tokenizer.vocab_size == 1200 and cfg["blank_id"] == 1200
    eng = load_file(str(out / "model.safetensors"))
    assert torch.equal(eng["prompt.w1"], model.prompt_kernel[0].weight) and eng["prompt.w1"].shape == (96, 56)
    assert torch.equal(eng["prompt.b2"], model.prompt_kernel[2].bias)
    # a hybrid prompt model without "auto" has no default language
    _, _, out = models.nemo_model("prompt_hybrid")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_class"] == "EncDecHybridRNNTCTCBPEModelWithPrompt" and cfg["default_language"] == ""
    assert cfg["has_ctc"] and cfg["num_prompts"] == 7
    model, _, out = models.nemo_model("eou")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_class"] == "EncDecRNNTBPEEOUModel" and cfg["num_prompts"] == 0
    assert (cfg["eou_id"], cfg["eob_id"]) == (model.eou_token, model.eob_token) == (4, 5)


def _edit_weights(src, dst, edit):
    """Copy a .nemo tar, passing its state_dict through edit(dict)."""
    with tarfile.open(src, "r:") as tin, tarfile.open(dst, "w:") as tout:
        for m in tin:
            data = tin.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("model_weights.ckpt"):
                sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                edit(sd)
                buf = io.BytesIO()
                torch.save(sd, buf)
                data = buf.getvalue()
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize("key,value,expect", [
    ("model_defaults.num_prompts", 0, "model_defaults.num_prompts = 0"),
    ("model_defaults.num_prompts", 9, "prompt_kernel.0.weight = [96, 56] (expected [2 d_model, d_model + num_prompts]"),
    ("model_defaults.prompt_dictionary", {"en-US": 1, "de-DE": 8},
     "model_defaults.prompt_dictionary = {'de-DE': 8} (indices must be integers in [0, 8))"),
    ("model_defaults.prompt_dictionary", {}, "model_defaults.prompt_dictionary = {}"),
], ids=["num_prompts-0", "num_prompts-mismatch", "index-out-of-range", "empty-dictionary"])
def test_family_refusals(tmp_path, key, value, expect):
    """Every prompt-specific value the engine cannot run is refused with one line naming the key and the value."""
    from nemotron_engine.weights.convert import ConversionError, convert

    _, nemo_path, _ = models.nemo_model("prompt_rnnt")
    src = tmp_path / "bad.nemo"
    _rewrite(nemo_path, src, _set(key, value))
    with pytest.raises(ConversionError) as e:
        convert(src, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("unsupported model: ") and expect in msg, msg
    assert not (tmp_path / "out").exists()


def test_eou_model_without_eou_piece_is_refused(tmp_path):
    """An EOU checkpoint whose tokenizer lacks <EOU> (here: the plain 96-piece one swapped in) is refused."""
    from nemotron_engine.weights.convert import ConversionError, build_config

    model, nemo_path, _ = models.nemo_model("eou")
    cfg, sd = _nemo_members(nemo_path)
    pieces = [f"p{i}" for i in range(96)]
    with pytest.raises(ConversionError, match=r"tokenizer = '<EOU>' \(an EOU model's tokenizer must hold"):
        build_config(cfg, sd, nemo_path, "", pieces)


def test_prompt_mlp_shape_is_checked(tmp_path):
    _, nemo_path, _ = models.nemo_model("prompt_rnnt")
    src = tmp_path / "bad.nemo"
    _edit_weights(nemo_path, src,
                  lambda sd: sd.update({"prompt_kernel.2.weight": sd["prompt_kernel.2.weight"][:, :-1]}))
    from nemotron_engine.weights.convert import ConversionError, convert

    with pytest.raises(ConversionError, match=r"prompt_kernel.2.weight = \[48, 95\] \(expected \[d_model, 2 d_model\]"):
        convert(src, tmp_path / "out")
