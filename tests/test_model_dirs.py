"""Malformed model directories and unresolvable backbones: each ends in one `ModelError` line naming the file.

Real directories are saved with the library (a head-mode and a full-mode MiniLM model), then broken one way each.
"""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from marsrm.cli import main
from marsrm.model import HeadRewardModel, ModelError, ModelSpec, ScalarHead, load_reward_model, new_full_model
from marsrm.runtime import resolve_backbone

DATA = Path(__file__).parent / "fixtures" / "data" / "hh-rlhf" / "helpful-base-test.jsonl"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_path):
    """{"head": a head-mode directory, "full": a full-mode directory}, both saved by marsrm; copy before breaking."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    spec = ModelSpec(mode="head", backbone=minilm_path, max_length=32, embed_dtype="fp32")
    HeadRewardModel(spec, ScalarHead(384)).save(root / "head")
    new_full_model(ModelSpec(mode="full", backbone=minilm_path, max_length=32)).save(root / "full")
    return {"head": root / "head", "full": root / "full"}


def edit_manifest(directory: Path, change) -> Path:
    path = directory / "marsrm.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return path


def save_head(directory: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(directory / "head.safetensors"))
    return directory / "head.safetensors"


def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _moved_backbone(d, tmp):
    return edit_manifest(d, lambda m: m["spec"].update(backbone=str(tmp / "moved" / "minilm")))


def _wrong_encoder_dim(d, tmp):
    save_head(d, ScalarHead(512).state_dict())
    return edit_manifest(d, lambda m: m.update(head_dim=512)).parent / "head.safetensors"


def _full_wrong_shape(d, tmp):
    from safetensors.torch import load_file, save_file

    state = load_file(str(d / "model.safetensors"))
    state["classifier.weight"] = torch.zeros(1, 10)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def _full_missing_backbone_tensor(d, tmp):
    from safetensors.torch import load_file, save_file

    state = load_file(str(d / "model.safetensors"))
    state.pop(next(k for k in state if "embeddings" in k))
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


# (case, which saved directory, break it → the path the message must name, what the message must say)
CASES = [
    ("missing", "head", lambda d, tmp: tmp / "nowhere", r"no such model directory; pass the directory"),
    ("a file", "head", lambda d, tmp: write(tmp / "model.txt", "x"), r"is a file, not a model directory"),
    ("empty", "head", lambda d, tmp: (tmp / "empty").mkdir() or tmp / "empty",
     r"neither marsrm.json nor config.json found; pass the"),
    ("manifest not json", "head", lambda d, tmp: write(d / "marsrm.json", "{oops"), r"not valid JSON .*line 1"),
    ("manifest a list", "head", lambda d, tmp: write(d / "marsrm.json", "[1, 2]"), r"expected a JSON object"),
    ("manifest no spec", "head", lambda d, tmp: edit_manifest(d, lambda m: m.pop("spec")), r"no 'spec' object"),
    ("spec lacks mode", "head", lambda d, tmp: edit_manifest(d, lambda m: m["spec"].pop("mode")),
     r"'spec.mode' is missing"),
    ("max_length a string", "head", lambda d, tmp: edit_manifest(d, lambda m: m["spec"].update(max_length="long")),
     r"'spec.max_length' must be an integer"),
    ("head_hidden a bool", "head", lambda d, tmp: edit_manifest(d, lambda m: m["spec"].update(head_hidden=True)),
     r"'spec.head_hidden' must be an integer"),
    ("normalization a list", "head",
     lambda d, tmp: edit_manifest(d, lambda m: m["spec"].update(normalization=[0, 1])), r"'spec.normalization'"),
    ("unknown mode", "head", lambda d, tmp: edit_manifest(d, lambda m: m["spec"].update(mode="tiny")),
     r"'spec.mode' is 'tiny'; choose one of head, full"),
    ("unknown pooling", "head", lambda d, tmp: edit_manifest(d, lambda m: m["spec"].update(pooling="max")),
     r"'spec.pooling' is 'max'"),
    ("unknown field", "head", lambda d, tmp: edit_manifest(d, lambda m: m["spec"].update(colour="blue")),
     r"unknown field\(s\) spec.colour"),
    ("head missing", "head", lambda d, tmp: (d / "head.safetensors").unlink() or d / "head.safetensors",
     r"missing; a head-mode model needs its trained head"),
    ("head empty", "head", lambda d, tmp: write(d / "head.safetensors", ""), r"not a readable safetensors file"),
    ("head truncated", "head", lambda d, tmp: cut_in_half(d / "head.safetensors"), r"not a readable safetensors"),
    ("head not safetensors", "head", lambda d, tmp: write(d / "head.safetensors", "weights: [0.1, 0.2]\n" * 20),
     r"not a readable safetensors file"),
    ("head tensor names", "head", lambda d, tmp: save_head(d, {"weight": torch.zeros(1, 384)}),
     r"holds tensors .*different models"),
    ("head shape vs head_hidden", "head",
     lambda d, tmp: edit_manifest(d, lambda m: m["spec"].update(head_hidden=8)).parent / "head.safetensors",
     r"head_hidden 8"),
    ("head dim vs encoder", "head", _wrong_encoder_dim, r"reads 512-dimensional embeddings.* gives 384"),
    ("backbone moved", "head", _moved_backbone, r"no such directory.*if the backbone moved, set 'spec.backbone'"),
    ("backbone offline hub name", "head",
     lambda d, tmp: edit_manifest(d, lambda m: m["spec"].update(backbone="nobody/no-such-model")),
     r"not in the local Hugging Face cache, and hub access is off"),
    ("backbone empty", "head", lambda d, tmp: edit_manifest(d, lambda m: m["spec"].update(backbone=" ")),
     r"marsrm.json: backbone ' ': empty name"),
    ("full config not json", "full", lambda d, tmp: write(d / "config.json", "{oops"),
     r"config.json' is not a valid JSON file\); the files there are damaged"),
    ("full config without model_type", "full", lambda d, tmp: write(d / "config.json", "{}").parent,
     r"cannot load the model \(.*model_type.*damaged or incomplete"),
    ("full weights missing", "full", lambda d, tmp: (d / "model.safetensors").unlink() or d,
     r"no file named model.safetensors"),
    ("full weights truncated", "full", lambda d, tmp: cut_in_half(d / "model.safetensors"),
     r"cannot load the model \(Error while deserializing header.*the file is damaged or incomplete"),
    ("full weights wrong shape", "full", _full_wrong_shape,
     r"wrong shape \(classifier.weight is \(1, 10\), config.json wants \(1, 384\)"),
    ("full weights lack a backbone tensor", "full", _full_missing_backbone_tensor, r"lack 1 backbone tensor"),
    ("full tokenizer broken", "full", lambda d, tmp: write(d / "tokenizer.json", "{oops"),
     r"cannot load the tokenizer \(.*line 1 column 2.*the file is damaged"),
]


def assert_one_line_error(call, named: Path, match: str) -> str:
    with pytest.raises(ModelError, match=match) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and str(named) in message, message
    return message


@pytest.fixture
def broken(request, saved, tmp_path):
    """(model directory, the path its error must name, expected message) for one case of CASES."""
    _, kind, corrupt, match = request.param
    directory = tmp_path / kind
    shutil.copytree(saved[kind], directory)
    named = corrupt(directory, tmp_path)
    model_dir = directory if named == directory or directory in named.parents else named
    return model_dir, named, match


@pytest.mark.parametrize("broken", CASES, ids=[case[0] for case in CASES], indirect=True)
def test_malformed_model_directory_is_one_line_error_naming_the_file(broken):
    model_dir, named, match = broken
    assert_one_line_error(lambda: load_reward_model(model_dir), named, match)


@pytest.mark.parametrize("broken", [c for c in CASES if c[0] in {"missing", "manifest not json", "head truncated",
                                                               "backbone moved", "full weights wrong shape"}],
                         ids=lambda c: c[0], indirect=True)
def test_eval_command_reports_a_malformed_model_in_one_line(broken, tmp_path, capfd):
    model_dir, named, match = broken
    rc = main(["eval", "--model", str(model_dir), "--data", str(DATA), "--n-resamples", "10",
               "--output", str(tmp_path / "eval.json")])
    err = capfd.readouterr().err
    assert rc == 2 and err.startswith("marsrm eval: error:") and err.count("\n") == 1 and str(named) in err, err
    assert re.search(match, err), err


def test_plain_encoder_directory_is_refused_unless_an_untrained_head_is_allowed(minilm_path, tmp_path, capfd):
    message = assert_one_line_error(lambda: load_reward_model(minilm_path), Path(minilm_path), r"no trained score head")
    assert "classifier.weight" in message and "--allow-untrained-head" in message
    model = load_reward_model(minilm_path, allow_untrained_head=True)
    assert model.score([({"role": "user", "content": "Hi"},)], ["Hello."]).shape == (1,)

    args = ["eval", "--model", minilm_path, "--data", str(DATA), "--n-resamples", "10",
            "--output", str(tmp_path / "eval.json")]
    capfd.readouterr()
    assert main(args) == 2
    err = capfd.readouterr().err
    assert err.startswith("marsrm eval: error:") and err.count("\n") == 1 and "no trained score head" in err, err
    assert main(args + ["--allow-untrained-head"]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["pairs"] > 0


@pytest.mark.parametrize("name", ["./modls/minilm", "~/no-such-dir/minilm", "/no/such/backbone", "a/b/c",
                                  "models\\minilm"])
def test_mistyped_backbone_path_is_no_such_directory(name):
    from marsrm.features import Encoder

    for call in (lambda: resolve_backbone(name), lambda: Encoder(name),
                 lambda: new_full_model(ModelSpec(mode="full", backbone=name))):
        with pytest.raises(ModelError, match=r"no such directory") as caught:
            call()
        assert f"backbone '{name}'" in str(caught.value) and "\n" not in str(caught.value)


def test_backbone_that_is_a_file_is_refused(tmp_path):
    path = write(tmp_path / "weights.safetensors", "x")
    with pytest.raises(ModelError, match="is a file, not a model directory"):
        resolve_backbone(str(path))


def test_hub_name_unavailable_offline_says_so():
    """conftest.py turns hub access off (HF_HUB_OFFLINE=1) before anything imports huggingface_hub."""
    from marsrm.features import Encoder

    name = "nobody/no-such-model"
    assert resolve_backbone(name) == name  # may be a hub name: only loading it can tell
    for call in (lambda: Encoder(name), lambda: new_full_model(ModelSpec(mode="full", backbone=name))):
        with pytest.raises(ModelError, match=r"not in the local Hugging Face cache, and hub access is off.*"
                                             r"pass a local model directory") as caught:
            call()
        assert f"backbone '{name}'" in str(caught.value) and "\n" not in str(caught.value)


def test_train_command_reports_a_mistyped_backbone_in_one_line(tmp_path, capfd):
    rc = main(["train", "--backbone", "./modls/minilm", "--data", str(DATA), "--output", str(tmp_path / "run")])
    err = capfd.readouterr().err
    assert rc == 2 and err.startswith("marsrm train: error:") and err.count("\n") == 1, err
    assert "backbone './modls/minilm': no such directory" in err
