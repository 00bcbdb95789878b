"""Plugin hook specifications (pluggy), entry-point group ``oodlens``.

Every hook is a *register callback*: oodlens calls it with a ``register`` function, and the
plugin calls ``register(...)`` once per object it contributes. The host owns the registry.
Built-in scorers, explainers and datasets are registered through these same hooks.

A plugin module declares ``@oodlens.hookimpl`` functions and is advertised in its
distribution's ``pyproject.toml``::

    [project.entry-points.oodlens]
    my_plugin = "my_package.plugin_module"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = ["hookspec", "hookimpl", "PROJECT_NAME"]

PROJECT_NAME = "oodlens"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_scorers(register: Callable[..., Any]) -> None:
    """Register OOD scorers.

    :param register: call ``register(cls)`` for each :class:`oodlens.Scorer` subclass; the
        class attributes ``name``, ``description`` and ``requires`` describe it.
    :returns: nothing; the return value is ignored.
    """


@hookspec
def register_explainers(register: Callable[..., Any]) -> None:
    """Register explainers.

    :param register: call ``register(cls)`` for each :class:`oodlens.Explainer` subclass; the
        class attributes ``name`` and ``description`` describe it.
    :returns: nothing; the return value is ignored.
    """


@hookspec
def register_datasets(register: Callable[..., Any]) -> None:
    """Register dataset kinds, addressed by spec strings such as ``"digits:0-4"``.

    :param register: call ``register(name, loader, description)``: ``name`` is the spec
        prefix before the first ``:``; ``loader(spec, arg, options, split)`` gets the whole
        spec string, its positional argument, its ``key=value`` options (a dict of strings)
        and the split (``"all"``, ``"train"`` or ``"test"``), and returns an
        :class:`oodlens.datasets.DatasetSource`.
    :returns: nothing; the return value is ignored.
    """


@hookspec
def register_protocols(register: Callable[..., Any]) -> None:
    """Register benchmark protocols: named presets of an ID set and OOD sets (e.g. OpenOOD's
    ``cifar10``), used by ``oodlens bench --protocol NAME``.

    :param register: call ``register(name, protocol, description)``: ``protocol`` is a
        mapping with ``id`` (``folders``: candidate folders under the data root, optional
        ``torchvision`` spec), ``ood`` (a list of sets, each with ``name``, ``group``,
        ``folders`` and optional ``torchvision``) and optional ``img_size``, ``family``
        (``"openood"``: OpenOOD's table layout), ``description``; see
        ``oodlens/protocols/openood_v1_5.yaml``. It is checked when registered
        (:meth:`oodlens.protocol.Protocol.from_mapping`); an invalid one is dropped with a
        warning naming the key.
    :returns: nothing; the return value is ignored.
    """
