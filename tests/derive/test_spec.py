"""Architecture specs: YAML/JSON files and the Python API load into ``MLPSpec`` or fail with a
one-line :class:`SpecError` that names the place and the problem."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest

from derive.errors import SpecError
from derive.frontend.spec import MLPSpec, load_spec, mlp_spec
from derive.symmetry.activations import known_activations


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _load_error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value


def _assert_one_line(error: SpecError) -> str:
    message = str(error)
    assert message.strip(), "empty error message"
    assert "\n" not in message and "\r" not in message, f"multi-line message: {message!r}"
    return message


# ---------------------------------------------------------------------------------------------
# Valid files
# ---------------------------------------------------------------------------------------------


def test_full_yaml_spec_loads(tmp_path):
    path = _write(
        tmp_path,
        "spec.yaml",
        "# a comment\n"
        "name: my_net\n"
        "architecture: mlp\n"
        "widths: [2, 3, 3, 2]\n"
        "activation: tanh\n"
        "permute: all\n"
        "scaling: none\n",
    )
    spec = load_spec(path)
    assert isinstance(spec, MLPSpec)
    assert spec.name == "my_net"
    assert spec.widths == (2, 3, 3, 2)
    assert spec.activations == ("tanh", "tanh")
    assert spec.permute == "all"
    assert spec.scaling == "none"
    assert spec.num_layers == 3
    assert spec.source == str(path)


def test_full_json_spec_loads(tmp_path):
    data = {
        "name": "json_net",
        "architecture": "mlp",
        "widths": [4, 5, 3],
        "activation": ["gelu"],
        "permute": "hidden",
        "scaling": "sign",
    }
    path = _write(tmp_path, "net.json", json.dumps(data))
    spec = load_spec(path)
    assert spec == MLPSpec(
        name="json_net",
        widths=(4, 5, 3),
        activations=("gelu",),
        permute="hidden",
        scaling="sign",
        source=str(path),
    )


def test_load_spec_accepts_str_path(tmp_path):
    path = _write(tmp_path, "s.yaml", "widths: [2, 3, 2]\n")
    assert load_spec(str(path)).widths == (2, 3, 2)


@pytest.mark.parametrize(
    "filename", ["relu-net.yaml", "relu-net.yml", "relu-net.json", "relu-net.YAML"]
)
def test_name_defaults_to_file_stem_and_defaults_apply(tmp_path, filename):
    text = '{"widths": [2, 3, 3, 2]}' if filename.endswith(".json") else "widths: [2, 3, 3, 2]\n"
    spec = load_spec(_write(tmp_path, filename, text))
    assert spec.name == "relu-net"
    assert spec.activations == ("relu", "relu")  # default activation
    assert spec.permute == "hidden"
    assert spec.scaling == "auto"


def test_yml_file_with_json_content_is_parsed_as_yaml(tmp_path):
    # YAML is a superset of JSON, so flow-style content in a .yaml file works.
    spec = load_spec(_write(tmp_path, "flow.yaml", '{"widths": [2, 3, 2], "activation": "sin"}'))
    assert spec.activations == ("sin",)


@pytest.mark.parametrize(
    ("activation", "expected"),
    [
        pytest.param("tanh", ("tanh", "tanh", "tanh"), id="one-for-all"),
        pytest.param(
            "[relu, tanh, identity]", ("relu", "tanh", "identity"), id="one-per-hidden-layer"
        ),
        pytest.param("[sin]", ("sin", "sin", "sin"), id="one-element-list"),
    ],
)
def test_activation_forms(tmp_path, activation, expected):
    spec = load_spec(
        _write(tmp_path, "a.yaml", f"widths: [2, 3, 4, 3, 2]\nactivation: {activation}\n")
    )
    assert spec.activations == expected


def test_no_hidden_layer_has_no_activations(tmp_path):
    spec = load_spec(_write(tmp_path, "lin.yaml", "widths: [3, 2]\nactivation: relu\n"))
    assert spec.widths == (3, 2)
    assert spec.activations == ()


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("linear", "identity"),
        ("none", "identity"),
        ("swish", "silu"),
        ("Swish", "silu"),
        ("ReLU", "relu"),
        ("TANH", "tanh"),
        ("Leaky-ReLU", "leaky_relu"),
        ("LeakyReLU", "leaky_relu"),
        (" gelu ", "gelu"),
    ],
)
def test_activation_aliases_and_case_folding(tmp_path, written, canonical):
    path = _write(
        tmp_path, "alias.json", json.dumps({"widths": [2, 3, 3, 2], "activation": written})
    )
    assert load_spec(path).activations == (canonical, canonical)
    assert mlp_spec([2, 3, 3, 2], written).activations == (canonical, canonical)
    assert mlp_spec([2, 3, 3, 2], [written, "relu"]).activations == (canonical, "relu")


# ---------------------------------------------------------------------------------------------
# The Python API
# ---------------------------------------------------------------------------------------------


def test_mlp_spec_defaults():
    spec = mlp_spec([2, 3, 3, 2])
    assert spec == MLPSpec(
        name="mlp_2_3_3_2",
        widths=(2, 3, 3, 2),
        activations=("relu", "relu"),
        permute="hidden",
        scaling="auto",
        source="python",
    )


def test_mlp_spec_all_arguments():
    spec = mlp_spec(
        (5, 4, 3), activation=["tanh"], permute="all", scaling="nonzero", name="x", source="here"
    )
    assert spec.widths == (5, 4, 3)
    assert isinstance(spec.widths, tuple)
    assert spec.activations == ("tanh",)
    assert (spec.permute, spec.scaling, spec.name, spec.source) == ("all", "nonzero", "x", "here")


def test_mlp_spec_per_layer_activations_and_tuple():
    assert mlp_spec([2, 3, 3, 2], ("relu", "sin")).activations == ("relu", "sin")
    assert mlp_spec([2, 3, 3, 2], ["identity", "GELU"]).activations == ("identity", "gelu")


def test_mlp_spec_is_frozen():
    spec = mlp_spec([2, 3, 2])
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        pytest.param(
            {"widths": [2, 3, 3, 2], "activation": "bogus"},
            ["'bogus'", "hidden layer 1", "relu"],
            id="unknown-activation",
        ),
        pytest.param(
            {"widths": [2, 3, 3, 2], "activation": ["relu", "bogus"]},
            ["'bogus'", "hidden layer 2"],
            id="unknown-activation-layer-2",
        ),
        pytest.param(
            {"widths": [2, 0, 2]}, ["widths[1]", "positive integer", "0"], id="zero-width"
        ),
        pytest.param({"widths": [2, -3, 2]}, ["widths[1]", "-3"], id="negative-width"),
        pytest.param({"widths": [2, 3.5, 2]}, ["widths[1]", "3.5"], id="float-width"),
        pytest.param({"widths": [2, 3.0, 2]}, ["widths[1]", "3.0"], id="integral-float-width"),
        pytest.param({"widths": [2, "3", 2]}, ["widths[1]", "'3'"], id="string-width"),
        pytest.param({"widths": [True, 3, 2]}, ["widths[0]", "True"], id="bool-width"),
        pytest.param({"widths": [4]}, ["widths", "at least two", "got 1"], id="one-width"),
        pytest.param({"widths": []}, ["widths", "at least two", "got 0"], id="no-widths"),
        pytest.param(
            {"widths": [2, 3, 3, 2], "activation": ["relu"] * 3},
            ["activation", "3 activations", "2 hidden layers"],
            id="activation-count",
        ),
        pytest.param(
            {"widths": [2, 3, 2], "permute": "some"},
            ["permute", "'some'", "hidden, all"],
            id="unknown-permute",
        ),
        pytest.param(
            {"widths": [2, 3, 2], "scaling": "Sign"},
            ["scaling", "'Sign'", "positive"],
            id="unknown-scaling",
        ),
    ],
)
def test_mlp_spec_rejects(kwargs, fragments):
    with pytest.raises(SpecError) as info:
        mlp_spec(**kwargs)
    message = _assert_one_line(info.value)
    assert message.startswith("python: ")
    assert info.value.where == "python"
    for fragment in fragments:
        assert fragment in message


def test_mlp_spec_error_names_the_source():
    with pytest.raises(SpecError) as info:
        mlp_spec([2, 0, 2], source="my_config")
    assert str(info.value).startswith("my_config: ")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"widths": 3}, id="widths-int"),
        pytest.param({"widths": [2, 3, 2], "activation": None}, id="activation-None"),
        pytest.param({"widths": [2, 3, 2], "activation": 7}, id="activation-int"),
    ],
)
def test_mlp_spec_rejects_wrong_types_with_spec_error(kwargs):
    # regression: these used to escape as TypeError from list(...) before validation
    with pytest.raises(SpecError) as info:
        mlp_spec(**kwargs)
    _assert_one_line(info.value)
    assert str(info.value).startswith("python: field '")


def test_mlp_spec_accepts_any_sequence_of_widths():
    assert mlp_spec(range(2, 5)).widths == (2, 3, 4)


@pytest.mark.parametrize("name", ["", "   "], ids=["empty", "blank"])
def test_mlp_spec_rejects_empty_name_like_spec_files(name):
    # regression: mlp_spec used to accept an empty name that a spec file rejects
    with pytest.raises(SpecError) as info:
        mlp_spec([2, 3, 2], name=name)
    assert "field 'name': expected a non-empty string" in _assert_one_line(info.value)


# ---------------------------------------------------------------------------------------------
# Invalid files: every problem is a one-line SpecError naming the file and the problem
# ---------------------------------------------------------------------------------------------

_VALID = known_activations()

INVALID_FILES = [
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 3, 2]\nactivation: bogus\n",
        ["'bogus'", "hidden layer 1", ", ".join(_VALID)],
        id="unknown-activation",
    ),
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 3, 2]\nactivation: [relu, softmaxx]\n",
        ["'softmaxx'", "hidden layer 2", "tanh"],
        id="unknown-activation-second-layer",
    ),
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 2]\nactivation: [[relu]]\n",
        ["activation", "hidden layer 1"],
        id="nested-activation-list",
    ),
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 2]\nactivation: null\n",
        ["activation", "expected a name or a list"],
        id="null-activation",
    ),
    pytest.param(
        "a.yaml", "widths: [2, 0, 2]\n", ["widths[1]", "positive integer", "got 0"], id="zero-width"
    ),
    pytest.param(
        "a.yaml",
        "widths: [2, -3, 2]\n",
        ["widths[1]", "positive integer", "-3"],
        id="negative-width",
    ),
    pytest.param("a.yaml", "widths: [2, 3.5, 2]\n", ["widths[1]", "3.5"], id="float-width"),
    pytest.param(
        "a.yaml", "widths: [2, 3.0, 2]\n", ["widths[1]", "3.0"], id="integral-float-width"
    ),
    pytest.param(
        "a.yaml", "widths: [2, 'three', 2]\n", ["widths[1]", "'three'"], id="string-width"
    ),
    pytest.param("a.yaml", "widths: [2, '3', 2]\n", ["widths[1]", "'3'"], id="quoted-number-width"),
    pytest.param("a.yaml", "widths: [2, true, 2]\n", ["widths[1]", "True"], id="bool-width"),
    pytest.param("a.json", '{"widths": [2, 3.0, 2]}', ["widths[1]", "3.0"], id="json-float-width"),
    pytest.param("a.json", '{"widths": [2, true, 2]}', ["widths[1]", "True"], id="json-bool-width"),
    pytest.param("a.yaml", "widths: [7]\n", ["widths", "at least two", "got 1"], id="one-width"),
    pytest.param("a.yaml", "widths: []\n", ["widths", "at least two", "got 0"], id="empty-widths"),
    pytest.param("a.yaml", "widths: 3\n", ["widths", "list of integers"], id="scalar-widths"),
    pytest.param(
        "a.yaml",
        "widths: [2, 3\nactivation: relu\n",
        ["malformed YAML", "line 2, column 11"],
        id="malformed-yaml",
    ),
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 2]\n\tactivation: relu\n",
        ["malformed YAML", "line 2, column 1"],
        id="yaml-tab",
    ),
    pytest.param(
        "a.json",
        '{"widths": [2, 3,]}',
        ["malformed JSON", "line 1, column 18"],
        id="malformed-json",
    ),
    pytest.param("a.json", '{"widths": [2, 3]', ["malformed JSON", "line 1"], id="truncated-json"),
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 3, 2]\nactivation: [relu, tanh, relu]\n",
        ["activation", "3 activations", "2 hidden layers"],
        id="too-many-activations",
    ),
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 3, 3, 2]\nactivation: [relu, tanh]\n",
        ["activation", "2 activations", "3 hidden layers"],
        id="too-few-activations",
    ),
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 2]\nactivations: relu\n",
        ["unknown field 'activations'", "widths"],
        id="unknown-field",
    ),
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 2]\npermute: neurons\n",
        ["permute", "'neurons'", "hidden, all"],
        id="unknown-permute",
    ),
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 2]\nscaling: diagonal\n",
        ["scaling", "'diagonal'", "auto, none, sign, positive, nonzero"],
        id="unknown-scaling",
    ),
    pytest.param(
        "a.yaml",
        "widths: [2, 3, 2]\narchitecture: cnn\n",
        ["architecture", "'cnn'", "mlp"],
        id="unknown-architecture",
    ),
    pytest.param(
        "a.yaml", "name: net\nactivation: relu\n", ["widths", "missing"], id="missing-widths"
    ),
    pytest.param(
        "a.yaml", "widths: [2, 3, 2]\nname: ''\n", ["name", "non-empty string"], id="empty-name"
    ),
    pytest.param("a.yaml", "widths: [2, 3, 2]\nname: 12\n", ["name", "12"], id="non-string-name"),
    pytest.param("a.yaml", "- 2\n- 3\n- 2\n", ["mapping", "got list"], id="top-level-list"),
    pytest.param("a.json", "[2, 3, 2]", ["mapping", "got list"], id="json-top-level-list"),
    pytest.param("a.yaml", "just a string\n", ["mapping", "got str"], id="top-level-scalar"),
    pytest.param("a.yaml", "", ["mapping", "NoneType"], id="empty-file"),
    pytest.param("a.yaml", b"widths: [2, 3, 2]\nname: caf\xe9\n", ["not UTF-8"], id="latin-1-file"),
    pytest.param("a.json", b"\xff\xfe{\x00}\x00", ["not UTF-8"], id="utf-16-json"),
]


@pytest.mark.parametrize(("filename", "text", "fragments"), INVALID_FILES)
def test_invalid_file_raises_one_line_spec_error(tmp_path, filename, text, fragments):
    path = _write(tmp_path, filename, text)
    error = _load_error(path)
    message = _assert_one_line(error)
    assert error.where == str(path)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_unknown_activation_lists_every_valid_activation(tmp_path):
    error = _load_error(
        _write(tmp_path, "a.yaml", "widths: [2, 3, 3, 2]\nactivation: [relu, nope]\n")
    )
    message = str(error)
    for name in _VALID:
        assert name in message
    assert re.search(r"unknown activation 'nope' at hidden layer 2\b", message)


def test_malformed_yaml_message_has_line_and_column(tmp_path):
    text = "name: x\nwidths: [2, 3, 2]\nactivation: relu\n  permute: all\n"
    error = _load_error(_write(tmp_path, "bad.yaml", text))
    assert re.search(r"malformed YAML at line \d+, column \d+: \S", str(error))
    _assert_one_line(error)


def test_unsafe_yaml_tag_is_rejected_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = f"widths: !!python/object/apply:os.system ['touch {marker}']\n"
    error = _load_error(_write(tmp_path, "evil.yaml", text))
    assert "malformed YAML" in str(error)
    assert not marker.exists()


def test_nonexistent_file(tmp_path):
    path = tmp_path / "missing" / "spec.yaml"
    error = _load_error(path)
    message = _assert_one_line(error)
    assert message.startswith(f"{path}: ")
    assert "cannot read spec file" in message
    assert "No such file" in message


def test_directory_is_unreadable_spec(tmp_path):
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    message = _assert_one_line(_load_error(folder))
    assert message.startswith(f"{folder}: cannot read spec file")


def test_permission_denied(tmp_path, monkeypatch):
    # chmod 0 does not stop root (how CI runs), so opening this one file is made to fail instead
    path = _write(tmp_path, "locked.yaml", "widths: [2, 3, 2]\n")
    real_open = Path.open

    def deny(self: Path, *args: object, **kwargs: object) -> object:
        if self == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    message = _assert_one_line(_load_error(path))
    assert message == f"{path}: cannot read spec file (Permission denied)"


def test_error_is_a_value_error_with_where_and_message(tmp_path):
    path = _write(tmp_path, "a.yaml", "widths: [2, 0, 2]\n")
    error = _load_error(path)
    assert isinstance(error, ValueError)
    assert error.where == str(path)
    assert str(error) == f"{error.where}: {error.message}"


def test_unknown_fields_of_mixed_key_types(tmp_path):
    # regression: sorting an int key with a str key used to raise TypeError
    error = _load_error(_write(tmp_path, "a.yaml", "widths: [2, 3, 2]\nfoo: 1\n1: 2\n"))
    assert "unknown field '1'" in _assert_one_line(error)


def test_unknown_field_with_newline_gives_one_line_message(tmp_path):
    # regression: the key used to be quoted raw, so a newline in it split the message
    error = _load_error(_write(tmp_path, "a.yaml", 'widths: [2, 3, 2]\n"bad\\nkey": 1\n'))
    message = _assert_one_line(error)
    assert "unknown field 'bad\\nkey'" in message
