"""Tagging (token classification): head, export parity, runtime words / offsets / entities mixed with sequence
tasks, predict --format json and --spans. Tiny random bases; the tagging data is synthetic (made here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from adapterdeploy.bio import split_tag
from adapterdeploy.cli import main
from adapterdeploy.config import AdapterConfig, HeadConfig
from adapterdeploy.errors import ArtifactError, ConfigError, InputError
from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint
from adapterdeploy.models.encoder import EncoderWithAdapters
from adapterdeploy.runtime.prediction import WordLabel
from adapterdeploy.runtime.tagging import merge_entities

TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
TEXTS = ["john smith lives in paris", "the unbelievably good film", "yes", "a  b\tc, d!"]


def make_tagging_checkpoint(base, out: Path, name: str = "ner", *, seed: int = 0, head_layers: int = 0) -> Path:
    torch.manual_seed(seed)
    model = EncoderWithAdapters(
        base,
        AdapterConfig(placement="houlsby", bottleneck=4, init_std=0.3),
        HeadConfig(problem_type="token_classification", num_labels=len(TAGS), labels=TAGS, hidden_layers=head_layers),
    )
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0.0, 0.5)
        for sites in model.adapters.values():
            for ad in sites.values():
                ad.down.bias.normal_(0.0, 0.3)
                ad.up.bias.normal_(0.0, 0.3)
    return save_checkpoint(checkpoint_from_model(model, name, max_length=16, text_pair=False), out / name, force=True)


@pytest.fixture(scope="module")
def tagging_deploy(tiny_base, tiny_base_dir, tmp_path_factory) -> tuple[Path, list[Path]]:
    """One deployment with a tagging task (1 hidden head layer), a sequence task and a second tagging task."""
    from exporter_helpers import make_checkpoint

    from adapterdeploy.exporter.deployment import export_deployment

    d = tmp_path_factory.mktemp("tagging")
    ckpts = [
        make_tagging_checkpoint(tiny_base, d, "ner", head_layers=1),
        make_checkpoint(tiny_base, d, "sent", placement="houlsby", seed=3),
        make_tagging_checkpoint(tiny_base, d, "ner2", seed=5),
    ]
    out = d / "deploy"
    export_deployment(tiny_base_dir, ckpts, out, precisions=("fp32",))
    return out, ckpts


def _torch_token_logits(base, ckpt_dir: Path, text: str, max_length: int = 16) -> tuple[np.ndarray, list]:
    from adapterdeploy.models.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt_dir).build_model(base).eval()
    enc = base.load_tokenizer()(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        logits = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])[0].numpy()
    return logits, enc.word_ids(0)


def test_export_parity_recorded_for_token_logits(tagging_deploy):
    from adapterdeploy.artifacts import Manifest, TaskSpec

    out, _ = tagging_deploy
    m = Manifest.read(out)
    assert m.featurizer.outputs[-1] == "tokens"
    spec = TaskSpec.read(out / m.tasks["ner"])
    assert spec.head.token_level and spec.head.feature == "tokens"
    fp32 = spec.parity["fp32"]
    assert fp32["logits_max_abs_diff"] <= 1e-4 and fp32["argmax_agreement"] == 1.0
    assert m.parity["tasks"]["ner"]["fp32"]["features_max_abs_diff"] <= 1e-4


def test_words_offsets_and_labels_match_pytorch_first_subword(tagging_deploy, tiny_base):
    from adapterdeploy.runtime import Deployment

    out, ckpts = tagging_deploy
    with Deployment.open(out) as dep:
        preds = dep.predict(TEXTS, task="ner")
        for text, p in zip(TEXTS, preds, strict=True):
            assert p.label is None and p.tokens is not None and p.entities is None
            for w in p.tokens:
                assert text[w.start : w.end] == w.word and w.word.strip() == w.word and w.label in TAGS
            logits, word_ids = _torch_token_logits(tiny_base, ckpts[0], text, dep.max_length)
            assert p.truncated is False
            firsts = [s for s, w in enumerate(word_ids) if w is not None and w not in word_ids[:s]]
            assert len(firsts) == len(p.tokens)
            probs = np.exp(logits[firsts]) / np.exp(logits[firsts]).sum(-1, keepdims=True)
            assert [TAGS[k] for k in probs.argmax(-1)] == [w.label for w in p.tokens]
            assert np.abs(probs.max(-1) - [w.score for w in p.tokens]).max() < 1e-4
        # the tiny tokenizer splits a long unknown word into subwords: one WordLabel for the whole word
        film = next(w for w in preds[1].tokens if w.word == "unbelievably")
        assert (film.start, film.end) == (4, 16)
        # punctuation is a word of its own, whitespace runs are skipped
        assert [w.word for w in preds[3].tokens] == ["a", "b", "c", ",", "d", "!"]


def test_mixed_batch_equals_single_task_runs(tagging_deploy):
    from adapterdeploy.runtime import Deployment, Embed

    out, _ = tagging_deploy
    with Deployment.open(out) as dep:
        alone_ner = dep.predict(TEXTS, task="ner")
        alone_sent = dep.predict(TEXTS, task="sent")
        rows = [(t, x) for x in TEXTS for t in ("sent", "ner", "ner2")] + [(Embed(None), TEXTS[0])]
        mixed = dep.predict_mixed(rows)
        got_ner = [p for (t, _), p in zip(rows, mixed, strict=True) if t == "ner"]
        got_sent = [p for (t, _), p in zip(rows, mixed, strict=True) if t == "sent"]
        for a, b in zip(alone_ner, got_ner, strict=True):
            assert [(w.word, w.start, w.end, w.label) for w in a.tokens] == [
                (w.word, w.start, w.end, w.label) for w in b.tokens
            ]
            assert np.allclose([w.score for w in a.tokens], [w.score for w in b.tokens], atol=1e-5)
        for a, b in zip(alone_sent, got_sent, strict=True):
            assert a.label == b.label and abs(a.score - b.score) < 1e-5 and a.tokens is None
        fanned = dep.fan_out(TEXTS[:2], tasks=["ner", "sent"], spans=True)
        assert fanned["ner"][0].entities is not None and fanned["sent"][0].entities is None


def test_tokens_output_requested_only_for_tagging_batches(tagging_deploy, monkeypatch):
    from adapterdeploy.runtime import Deployment

    out, _ = tagging_deploy
    with Deployment.open(out) as dep:
        asked: list[list[str]] = []
        session = dep._engine.adapted
        real = session.run

        class Spy:
            def __getattr__(self, name):
                return getattr(session, name)

            def run(self, names, feeds):
                asked.append(list(names))
                return real(names, feeds)

        monkeypatch.setattr(dep._engine, "adapted", Spy())
        dep.predict(TEXTS, task="sent")
        dep.predict_mixed([("sent", TEXTS[0]), ("ner", TEXTS[1])])
        assert asked == [["cls"], ["cls", "tokens"]]


def test_spans_merge_bio_and_json_contract(tagging_deploy):
    from adapterdeploy.runtime import Deployment

    out, _ = tagging_deploy
    with Deployment.open(out) as dep:
        p = dep.predict([TEXTS[0]], task="ner", spans=True)[0]
        d = p.to_dict()
        assert set(d["tokens"][0]) == {"word", "start", "end", "label", "score"}
        assert "entities" in d and all(set(e) >= {"start", "end", "label", "score"} for e in d["entities"])
        assert p.entities == merge_entities(p.tokens, TEXTS[0])
        assert "entities" not in dep.predict([TEXTS[0]], task="ner")[0].to_dict()
        # a server's path: encode once, then predict_encoded
        enc = dep.encode(TEXTS)
        again = dep.predict_encoded([("ner", e) for e in enc], spans=True)
        got = again[0].to_dict()["tokens"]
        assert [{**t, "score": 0} for t in got] == [{**t, "score": 0} for t in d["tokens"]]
        assert np.allclose([t["score"] for t in got], [t["score"] for t in d["tokens"]], atol=1e-5)
        with pytest.raises(InputError, match="tags words"):
            dep.predict_encoded(
                [("ner", type(enc[0])(ids=enc[0].ids, type_ids=enc[0].type_ids, count=3, truncated=False))]
            )


def test_merge_entities_by_hand():
    text = "John Smith met Ann in New York today"
    words, pos = [], 0
    tags = ["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC", "I-LOC", "I-PER"]
    for w, tag in zip(text.split(), tags, strict=True):
        start = text.index(w, pos)
        pos = start + len(w)
        words.append(WordLabel(w, start, pos, tag, 0.5 if w == "Smith" else 1.0))
    got = [(e.word, e.label, e.score) for e in merge_entities(words, text)]
    # I-PER after a LOC opens a new PER entity (IOB1 / transformers' "simple" grouping)
    assert got == [("John Smith", "PER", 0.75), ("Ann", "PER", 1.0), ("New York", "LOC", 1.0), ("today", "PER", 1.0)]
    # B- splits adjacent entities of one type; no-prefix tags merge; S- / E- close
    tags2 = ["B-X", "B-X", "PER", "PER", "S-Y", "E-Y"]
    w2 = [WordLabel(x, i * 2, i * 2 + 1, t, 1.0) for i, (x, t) in enumerate(zip("abcdef", tags2, strict=True))]
    assert [(e.word, e.label) for e in merge_entities(w2, "a b c d e f")] == [
        ("a", "X"),
        ("b", "X"),
        ("c d", "PER"),
        ("e", "Y"),
        ("f", "Y"),
    ]
    assert split_tag("O") == (None, None) and split_tag("B-LOC") == ("B", "LOC") and split_tag("MISC") == ("I", "MISC")


def test_predict_cli_json_and_spans(tagging_deploy):
    out, _ = tagging_deploy
    r = CliRunner().invoke(main, ["predict", str(out), "--task", "ner", "--format", "json", "--spans", TEXTS[0]])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)[0]
    assert row["row"] == 0 and row["label"] is None and "entities" in row
    assert [t["word"] for t in row["tokens"]] == TEXTS[0].split()
    r = CliRunner().invoke(main, ["predict", str(out), "--task", "ner", TEXTS[0]])  # table
    assert r.exit_code == 0 and "john/" in r.output.replace(" ", "")


def test_standalone_folder_of_a_tagging_task_is_a_token_classification_model(tiny_base, tiny_base_dir, tmp_path):
    """export --standalone: optimum's ORTModelForTokenClassification + transformers' pipeline (aggregation
    "first") find the entities our runtime finds; export-standalone (from a deployment) still refuses."""
    from optimum.onnxruntime import ORTModelForTokenClassification
    from transformers import AutoTokenizer, pipeline

    from adapterdeploy.exporter.compose import export_standalone_folder
    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.runtime import Deployment

    out = tmp_path / "deploy"
    export_deployment(tiny_base_dir, [make_tagging_checkpoint(tiny_base, tmp_path, seed=7)], out, standalone=True)
    folder = out / "standalone" / "ner"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"] and config["id2label"]["1"] == "B-PER"
    model = ORTModelForTokenClassification.from_pretrained(str(folder))
    tok = AutoTokenizer.from_pretrained(str(folder))
    pipe = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="first")
    texts = ["john smith lives in paris, unbelievably", "mary went to london and paris with peter"]
    with Deployment.open(out) as dep:
        ours = dep.predict(texts, task="ner", spans=True)
    for text, p in zip(texts, ours, strict=True):
        theirs = pipe(text)  # first-subword word labels, grouped, "O" left out: our entities
        assert [(e.word, e.start, e.end, e.label) for e in p.entities] == [
            (g["word"], g["start"], g["end"], g["entity_group"]) for g in theirs
        ]
        assert np.allclose([e.score for e in p.entities], [g["score"] for g in theirs], atol=1e-4)
    assert sum(len(p.entities) for p in ours) >= 2  # the comparison is not vacuous
    with pytest.raises(ConfigError, match="tagging"):
        export_standalone_folder(out, "ner", tmp_path / "x")


def test_old_featurizer_without_tokens_output_refuses_a_tagging_task(tagging_deploy, tmp_path):
    """A deployment exported before tagging has no ``tokens`` output: loading a tagging task says re-export."""
    import shutil

    import onnx

    from adapterdeploy.artifacts import Manifest, file_entry
    from adapterdeploy.runtime import Deployment

    out, _ = tagging_deploy
    old = tmp_path / "old"
    shutil.copytree(out, old)
    m = Manifest.read(old)
    graph = old / m.featurizer.variants["fp32"].adapted
    model = onnx.load(str(graph))
    keep = [o for o in model.graph.output if o.name != "tokens"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(graph))
    files = dict(m.files)
    files[m.featurizer.variants["fp32"].adapted] = file_entry(graph)
    import dataclasses

    dataclasses.replace(m, files=files).write(old)
    with Deployment.open(old) as dep:
        assert dep.predict([TEXTS[0]], task="sent")[0].label is not None
        with pytest.raises(Exception, match="re-export") as info:
            dep.predict([TEXTS[0]], task="ner")
        assert isinstance(info.value, ArtifactError) or isinstance(info.value.__cause__, ArtifactError)


def test_check_judges_tagging_parity(tagging_deploy):
    out, _ = tagging_deploy
    r = CliRunner().invoke(main, ["check", str(out), "--json"])
    items = {i["name"]: i for i in json.loads(r.output)["items"]}
    assert items["parity"]["status"] == "pass", items["parity"]
    assert items["parity"]["data"]["max_diff"]["ner"] < 1e-4


# ---- training (train --head tagging) -------------------------------------------------------------------------
PEOPLE = ["john", "mary", "anna", "peter"]
PLACES = ["paris", "london", "york"]
FILLER = "the a was in to and went saw met".split()


def _conll(path: Path, n: int, seed: int) -> Path:
    """Synthetic CoNLL sentences from a tiny gazetteer: names are B-PER (+ I-PER surname), places B-LOC."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, 3)]
        words.insert(rng.randrange(len(words) + 1), (rng.choice(PEOPLE), "B-PER"))
        if rng.random() < 0.5:
            i = next(k for k, (_, t) in enumerate(words) if t == "B-PER")
            words.insert(i + 1, ("smith", "I-PER"))
        words.insert(rng.randrange(len(words) + 1), (rng.choice(PLACES), "B-LOC"))
        out.append("\n".join(f"{w}\t{t}" for w, t in words))
    path.write_text("-DOCSTART-\tO\n\n" + "\n\n".join(out) + "\n")
    return path


def test_read_tagging_formats_and_errors(tmp_path):
    from adapterdeploy.errors import DataError
    from adapterdeploy.tagging_data import read_tagging

    conll = tmp_path / "a.conll"
    conll.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    data = read_tagging(conll)
    assert data.labels == ("O", "B-ORG", "B-PER") and len(data) == 2
    assert data.label_names(data.sentences[0]) == ["B-ORG", "O"] and data.sentences[1].line == 4
    jl = tmp_path / "a.jsonl"
    jl.write_text(json.dumps({"tokens": ["John", "ran"], "labels": ["B-PER", "O"]}) + "\n\n")
    assert read_tagging(jl).sentences[0].words == ("John", "ran")
    bad = {
        "x.conll": ("John B-PER\nran\n", "line 2.*no label"),
        "y.jsonl": ('{"tokens": ["a"], "labels": []}\n', "1 tokens but 0 labels"),
        "z.jsonl": ("{not json\n", "not valid JSON"),
        "e.conll": ("\n\n", "no sentences"),
        "o.conll": ("a O\nb O\n", "at least 2 labels"),
    }
    for name, (text, match) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=match):
            read_tagging(tmp_path / name)
    (tmp_path / "b.conll").write_bytes(b"\xff\xfe a O\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_tagging(tmp_path / "b.conll")
    with pytest.raises(DataError, match="'B-LOC' is not one of the training labels"):
        (tmp_path / "dev.conll").write_text("Paris B-LOC\n")
        read_tagging(tmp_path / "dev.conll", labels=data.labels)


def test_entity_metrics_by_hand():
    from adapterdeploy.bio import entity_metrics, tag_spans

    assert tag_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "E-LOC", "U-X"]) == [
        (0, 1, "PER"),
        (3, 3, "LOC"),
        (4, 5, "LOC"),
        (6, 6, "X"),
    ]
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["O", "B-LOC"]]
    m = entity_metrics(gold, pred)  # gold spans 3, predicted 3, right 2 (the PER span is cut short)
    assert m["entity_precision"] == pytest.approx(2 / 3) and m["entity_recall"] == pytest.approx(2 / 3)
    assert m["entity_f1"] == pytest.approx(2 / 3) and m["word_accuracy"] == pytest.approx(5 / 6)


def test_train_tagging_cli_then_export_and_predict(tiny_base_dir, tmp_path):
    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.models.checkpoint import load_checkpoint
    from adapterdeploy.runtime import Deployment

    train = _conll(tmp_path / "train.conll", 96, 0)
    dev = _conll(tmp_path / "dev.conll", 24, 1)
    out = tmp_path / "ckpt"
    args = ["train", "--base", str(tiny_base_dir), "--head", "tagging", "--train", str(train), "--eval", str(dev)]
    args += ["--task", "ner", "--out", str(out), "--epochs", "4", "--lr", "2e-2", "--quiet", "--threads", "1"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(out)
    assert ckpt.head.token_level and ckpt.head.labels == ("O", "B-LOC", "B-PER", "I-PER")
    assert ckpt.training["main_metric"] == "entity_f1" and len(ckpt.training["history"]) == 4
    # the gazetteer is learnable: entity F1 well above what the untrained head gets (~0)
    assert ckpt.metrics["entity_f1"] > 0.5, ckpt.metrics
    deploy = tmp_path / "deploy"
    export_deployment(tiny_base_dir, [out], deploy)
    with Deployment.open(deploy) as dep:
        p = dep.predict(["mary smith went to london"], task="ner", spans=True)[0]
        assert [w.word for w in p.tokens] == ["mary", "smith", "went", "to", "london"]
    # check --eval scores the deployment (ONNX) on the dev file: the trainer's entity F1 again
    r = CliRunner().invoke(main, ["check", str(deploy), "--eval", str(dev), "--task", "ner", "--json"])
    acc = {i["name"]: i for i in json.loads(r.output)["items"]}["accuracy"]
    assert acc["status"] == "pass", acc
    assert abs(acc["data"]["metrics"]["entity_f1"] - ckpt.metrics["entity_f1"]) < 0.02


def test_train_tagging_bad_file_is_one_error_line(tiny_base_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["a", "b"], "labels": ["O"]}\n')
    args = ["train", "--base", str(tiny_base_dir), "--head", "tagging", "--train", str(bad), "--task", "t"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "line 1" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


# ---- AdapterHub tagging heads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 2])
def test_adapterhub_tagging_head_matches_the_library(tiny_base_dir, tmp_path, layers):
    import adapters as ah

    from adapterdeploy.models.adapterhub import import_adapterhub
    from adapterdeploy.models.base import load_base

    base = load_base(tiny_base_dir)
    torch.manual_seed(layers)
    hub = ah.AutoAdapterModel.from_pretrained(str(tiny_base_dir), attn_implementation="eager")
    hub.add_adapter("ner", config=ah.SeqBnConfig(reduction_factor=8))
    hub.add_tagging_head("ner", num_labels=len(TAGS), layers=layers, id2label=dict(enumerate(TAGS)))
    with torch.no_grad():
        for name, p in hub.named_parameters():
            if ".adapters.ner." in name or name.startswith("heads.ner."):
                p.add_(torch.randn_like(p) * 0.5)
    hub.set_active_adapters("ner")
    hub.eval()
    enc = dict(base.load_tokenizer()(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        ref = hub(**enc).logits
    assert ref.shape[:2] == enc["input_ids"].shape  # per-token logits
    hub.save_adapter(str(tmp_path / "ner"), "ner", with_head=True)
    ckpt = import_adapterhub(base, tmp_path / "ner")
    assert ckpt.head.token_level and ckpt.head.labels == TAGS and ckpt.head.hidden_layers == layers - 1
    with torch.no_grad():
        ours = ckpt.build_model(base)(**enc)
    assert (ours - ref).abs().max().item() <= 1e-4
    if layers == 2:  # the CLI's own cross-check (verify_import) against the library, then a deployment
        from adapterdeploy.exporter.deployment import export_deployment
        from adapterdeploy.runtime import Deployment

        out = tmp_path / "ckpt"
        args = ["import-adapterhub", "--base", str(tiny_base_dir), "--adapter", str(tmp_path / "ner")]
        r = CliRunner().invoke(main, [*args, "--out", str(out)])
        assert r.exit_code == 0 and "token_classification" in r.output, r.output
        export_deployment(tiny_base_dir, [out], tmp_path / "deploy")
        with Deployment.open(tmp_path / "deploy") as dep:
            p = dep.predict([TEXTS[0]], task="ner")[0]
        tok = base.load_tokenizer()(TEXTS[0], return_tensors="pt")
        with torch.no_grad():
            lib = hub(**dict(tok)).logits[0]
        firsts = [s for s, w in enumerate(tok.word_ids(0)) if w is not None and w not in tok.word_ids(0)[:s]]
        assert [w.label for w in p.tokens] == [TAGS[int(k)] for k in lib[firsts].argmax(-1)]


# ---- serving: /v1 JSON, KServe v2 (REST, binary, gRPC), model metadata ---------------------------------------
def test_serving_tagging_outputs(tagging_deploy):
    import grpc
    import httpx
    from serving_fixtures import ThreadedServer, free_port

    from adapterdeploy.runtime import Deployment
    from adapterdeploy.serving import protocol, v2_binary
    from adapterdeploy.serving.grpc_v2 import messages, method_path
    from adapterdeploy.serving.settings import Settings

    out, _ = tagging_deploy
    texts = TEXTS[:2]
    with (
        Deployment.open(out) as d,
        ThreadedServer(Settings(deploy_dir=str(out), grpc_port=free_port()), deployment=d) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        want = d.predict(texts, task="ner", spans=True)
        v1 = c.post("/v1/predict", json={"task": "ner", "inputs": texts, "spans": True}).json()["predictions"]
        assert [[t["label"] for t in p["tokens"]] for p in v1] == [[w.label for w in p.tokens] for p in want]
        assert [len(p["entities"]) for p in v1] == [len(p.entities) for p in want]
        plain = c.post("/v1/predict", json={"task": "ner", "inputs": texts}).json()["predictions"]
        assert "entities" not in plain[0] and plain[0]["tokens"][0]["start"] == 0
        fan = c.post("/v1/fan-out", json={"tasks": ["sent", "ner"], "inputs": texts, "spans": True}).json()
        assert "tokens" not in fan["predictions"]["sent"][0] and "entities" in fan["predictions"]["ner"][1]

        meta = c.get("/v2/models/ner").json()
        names = [o["name"] for o in meta["outputs"]]
        assert names[:8] == [*protocol.TOKEN_OUTPUTS, "score", "truncated"]
        assert "entity_label" in names and meta["parameters"]["problem_type"] == "token_classification"
        body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]}
        outs = {o["name"]: o for o in c.post("/v2/models/ner/infer", json=body).json()["outputs"]}
        assert list(outs) == names[:8]
        counts = outs["token_count"]["data"]
        assert counts == [len(p.tokens) for p in want] and outs["token_word"]["shape"] == [sum(counts)]
        assert outs["token_label"]["data"] == [w.label for p in want for w in p.tokens]
        assert outs["token_start"]["datatype"] == "INT64" and outs["token_start"]["data"][counts[0]] == 0
        body["outputs"] = [{"name": "entity_label"}, {"name": "entity_count", "parameters": {"binary_data": True}}]
        r = c.post("/v2/models/ner/infer", json=body)
        n = int(r.headers[v2_binary.HEADER])
        head = json.loads(r.content[:n])
        assert head["outputs"][0]["data"] == [e.label for p in want for e in p.entities]
        assert np.frombuffer(r.content[n:], dtype="<i8").tolist() == [len(p.entities) for p in want]

        pb = messages()
        request = pb.ModelInferRequest(
            model_name="ner",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="text",
                    datatype="BYTES",
                    shape=[2],
                    contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts]),
                )
            ],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in ("token_word", "entity_count")],
        )
        with grpc.insecure_channel(f"127.0.0.1:{srv.settings.grpc_port}") as channel:
            infer = channel.unary_unary(
                method_path("ModelInfer"),
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            resp = infer(request, timeout=30)
        words = v2_binary.decode_bytes_elements(resp.raw_output_contents[0], "words")
        assert [w.decode() for w in words] == [w.word for p in want for w in p.tokens]
        assert np.frombuffer(resp.raw_output_contents[1], dtype="<i8").tolist() == [len(p.entities) for p in want]


def test_train_tagging_on_roberta(tiny_bases, tmp_path):
    """Pre-split words on a byte-level BPE tokenizer (needs add_prefix_space), then the runtime's words and
    offsets. (XLM-R's SentencePiece tokenizer passed the same test once; left out of the suite for time.)"""
    arch = "roberta"
    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.trainer import TrainConfig, train_task
    from adapterdeploy.runtime import Deployment
    from adapterdeploy.tagging_data import read_tagging

    base = load_base(tiny_bases[arch])
    data = read_tagging(_conll(tmp_path / "t.conll", 16, 0))
    cfg = TrainConfig(epochs=1, max_length=32, progress=False)
    ckpt = train_task(base, data, data, name="ner", config=cfg)
    assert ckpt.head.token_level and "entity_f1" in ckpt.metrics
    from adapterdeploy.models.checkpoint import save_checkpoint

    export_deployment(tiny_bases[arch], [save_checkpoint(ckpt, tmp_path / "ckpt")], tmp_path / "deploy")
    with Deployment.open(tmp_path / "deploy") as dep:
        p = dep.predict(["mary smith went to london"], task="ner")[0]
    assert [w.word for w in p.tokens] == ["mary", "smith", "went", "to", "london"]
