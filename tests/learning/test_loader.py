"""`--task module:function` loading and calling, with clear ConfigErrors."""

import sys
import textwrap
import uuid

import pytest

from p2pfl.errors import ConfigError
from p2pfl.learning import ClassificationTask, call_task_factory, digits_task, load_task_factory


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a module with a fresh name into tmp_path; return its name."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = []

    def write(source):
        name = f"usertask_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_builtin_digits_spec():
    factory = load_task_factory("p2pfl.learning.digits:digits_task")
    assert factory is digits_task
    task = call_task_factory(factory, peer_index=1, n_peers=3, seed=0, partition="iid", extra=1)
    assert isinstance(task, ClassificationTask) and task.num_samples > 0


def test_user_module_on_path(user_module, tmp_path):
    name = user_module(
        """
        from p2pfl.learning import digits_task

        def make(peer_index, n_peers):
            return digits_task(peer_index, n_peers)

        def no_args():
            return digits_task()

        class Factory:
            @staticmethod
            def create(**context):
                assert "seed" in context
                return digits_task()
        """
    )
    with pytest.raises(ConfigError, match="no module named"):
        load_task_factory(f"{name}:make")
    make = load_task_factory(f"{name}:make", path=tmp_path)
    assert call_task_factory(make, peer_index=0, n_peers=2, seed=5).num_samples > 0
    assert call_task_factory(load_task_factory(f"{name}:no_args"), seed=1).num_samples > 0
    create = load_task_factory(f"{name}:Factory.create")
    assert call_task_factory(create, seed=1).num_samples > 0
    with pytest.raises(ConfigError, match="cannot be called"):
        call_task_factory(make, peer_index=0)  # n_peers missing


@pytest.mark.parametrize(
    "spec", ["", "mod", "mod:", ":fn", "mod:fn:x", "mod-x:fn", "mod:1fn", "mod.:fn", "a b:fn"]
)
def test_malformed_spec(spec):
    with pytest.raises(ConfigError, match="module:function"):
        load_task_factory(spec)


def test_missing_things(user_module, tmp_path):
    name = user_module("VALUE = 3\n")
    with pytest.raises(ConfigError, match="no module named 'no_such_mod_xyz'"):
        load_task_factory("no_such_mod_xyz:make")
    with pytest.raises(ConfigError, match="has no attribute 'make'"):
        load_task_factory(f"{name}:make", path=tmp_path)
    with pytest.raises(ConfigError, match="not callable"):
        load_task_factory(f"{name}:VALUE", path=tmp_path)


def test_errors_inside_user_module_are_reported(user_module, tmp_path):
    broken = user_module("import no_such_dependency_xyz\n")
    with pytest.raises(ConfigError, match=r"importing .* failed.*no_such_dependency_xyz") as e:
        load_task_factory(f"{broken}:make", path=tmp_path)
    assert isinstance(e.value.__cause__, ModuleNotFoundError)
    crashing = user_module("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="RuntimeError: boom"):
        load_task_factory(f"{crashing}:make", path=tmp_path)


def test_factory_must_return_a_task():
    with pytest.raises(ConfigError, match=r"not a Task.*missing"):
        call_task_factory(lambda: object())
