"""Plugin discovery and the name registries: pluggy does the hook plumbing and signature validation; this module
checks what plugins register (type, unique name) and resolves names with "did you mean"."""
from __future__ import annotations

import difflib
import importlib
import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

import pluggy

from tlbench import hookspecs
from tlbench.publishing import LeaderboardFormat, ReportSection
from tlbench.types import BackboneFamily, DatasetFamily, Executor, Strategy, UsageError

ENTRY_POINT_GROUP = "tlbench"
DISABLE_ENV = "TLBENCH_DISABLE_PLUGINS"  # set to 1 to load built-in plugins only (the tests do)
DEFAULT_PLUGINS = (
    "tlbench.plugins.strategies",
    "tlbench.plugins.lp_ft",
    "tlbench.plugins.llrd",
    "tlbench.plugins.bitfit",
    "tlbench.plugins.l2_sp",
    "tlbench.plugins.wise_ft",
    "tlbench.plugins.lora",
    "tlbench.plugins.timm_backbones",
    "tlbench.plugins.torchvision_backbones",
    "tlbench.plugins.efficientnet_lite",
    "tlbench.plugins.fashion_mnist",
    "tlbench.plugins.imagefolder",
    "tlbench.plugins.torchvision_datasets",
    "tlbench.plugins.synthetic",
    "tlbench.plugins.local_executor",
    "tlbench.plugins.process_executor",
    "tlbench.plugins.ray_executor",
    "tlbench.plugins.slurm_executor",
    "tlbench.plugins.leaderboard_formats",
    "tlbench.plugins.report_sections",
)

T = TypeVar("T")


@dataclass
class PluginInfo:
    name: str
    version: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    error: str | None = None  # why it failed to load, if it did


class Registry(Generic[T]):
    """Named objects of one kind. ``register`` validates; ``get`` resolves with "did you mean"."""

    def __init__(self, kind: str, plural: str, check: Callable[[Any], T]):
        self.kind = kind
        self.plural = plural
        self._check = check
        self._entries: dict[str, tuple[T, str]] = {}
        self.current_plugin = "?"

    def register(self, obj: Any) -> None:
        item = self._check(obj)
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name or ":" in name:
            raise UsageError(f"plugin {self.current_plugin!r} registered a {self.kind} without a valid name "
                             f"({name!r}); give it a non-empty `name` without ':'")
        if name in self._entries:
            other = self._entries[name][1]
            raise UsageError(f"{self.kind} name {name!r} is registered twice, by plugin {other!r} and by plugin "
                             f"{self.current_plugin!r}; uninstall or rename one of them")
        self._entries[name] = (item, self.current_plugin)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name][0]) for name in self.names()]

    def owner(self, name: str) -> str:
        return self._entries[name][1]

    def get(self, name: str, hint: str = "") -> T:
        if name in self._entries:
            return self._entries[name][0]
        raise UsageError(self.unknown_message(name, hint))

    def unknown_message(self, name: str, hint: str = "") -> str:
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        suggestion = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(self.names()) or 'none'}"
        return f"unknown {self.kind} {name!r}{suggestion} (see `tlbench list {self.plural}`){hint}"


def _as_strategy(obj: Any) -> Strategy:
    if isinstance(obj, type) and issubclass(obj, Strategy):
        obj = obj()
    if not isinstance(obj, Strategy):
        raise UsageError(f"register_strategies got {obj!r}, which is not a tlbench.Strategy subclass or instance")
    return obj


def _protocol_check(kind: str, protocol: type, members: tuple[str, ...]) -> Callable[[Any], Any]:
    def check(obj: Any) -> Any:
        missing = [member for member in members if not hasattr(obj, member)]
        if missing:
            raise UsageError(f"register_{kind}s got {obj!r}, which is not a tlbench.{protocol.__name__} "
                             f"(missing: {', '.join(missing)})")
        return obj
    return check


class Plugins:
    """Loads built-in and third-party plugins and collects what they register."""

    def __init__(self, load_third_party: bool | None = None):
        if load_third_party is None:
            load_third_party = os.environ.get(DISABLE_ENV, "").strip().lower() not in ("1", "true", "yes")
        self.load_third_party = load_third_party  # workers of a grid load the same plugin set
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.strategies: Registry[Strategy] = Registry("strategy", "strategies", _as_strategy)
        self.backbones: Registry[BackboneFamily] = Registry("backbone", "backbones", _protocol_check(
            "backbone", BackboneFamily, ("name", "description", "takes_argument", "build")))
        self.datasets: Registry[DatasetFamily] = Registry("dataset", "datasets", _protocol_check(
            "dataset", DatasetFamily, ("name", "description", "takes_argument", "defaults", "fingerprint", "load")))
        self.executors: Registry[Executor] = Registry("executor", "executors", _protocol_check(
            "executor", Executor, ("name", "description", "execute")))
        self.leaderboard_formats: Registry[LeaderboardFormat] = Registry(
            "leaderboard format", "formats", _protocol_check(
                "leaderboard_format", LeaderboardFormat, ("name", "description", "render")))
        self.report_sections: Registry[ReportSection] = Registry("report section", "sections", _protocol_check(
            "report_section", ReportSection, ("name", "title", "order", "render")))
        from tlbench import __version__

        for module_name in DEFAULT_PLUGINS:
            self._add(importlib.import_module(module_name), module_name.rsplit(".", 1)[-1], __version__, True)
        if load_third_party:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                version = ep.dist.version if ep.dist else ""
                try:
                    plugin = ep.load()
                except Exception as exc:  # a broken third-party plugin must not break unrelated runs
                    self.info[ep.name] = PluginInfo(ep.name, version, False, error=_one_line(exc))
                    continue
                self._add(plugin, ep.name, version, False)
        self._collect()

    def _add(self, plugin: Any, name: str, version: str, builtin: bool) -> None:
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self.info[name] = PluginInfo(name, version, builtin, error=f"invalid hook implementation: {exc}")
            return
        hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self.info[name] = PluginInfo(name, version, builtin, hooks)

    def _collect(self) -> None:
        hook_to_registry = {
            "register_strategies": self.strategies,
            "register_backbones": self.backbones,
            "register_datasets": self.datasets,
            "register_executors": self.executors,
            "register_leaderboard_formats": self.leaderboard_formats,
            "register_report_sections": self.report_sections,
        }
        for hook_name, registry in hook_to_registry.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                registry.current_plugin = impl.plugin_name
                impl.function(register=registry.register)

    def add_commands(self, cli: Any) -> None:
        self.pm.hook.register_commands(cli=cli)

    @property
    def failures(self) -> list[PluginInfo]:
        return [i for i in self.info.values() if i.error]

    def failure_hint(self) -> str:
        """Appended to "unknown name" errors: a name may belong to a plugin that failed to load."""
        if not self.failures:
            return ""
        names = ", ".join(f"{i.name} ({i.error})" for i in self.failures)
        return f"; plugins that failed to load: {names}"

    def require_valid(self) -> None:
        """Invalid hook implementations are bugs in installed code: refuse to run until they are fixed."""
        for info in self.failures:
            if info.error and info.error.startswith("invalid hook"):
                raise UsageError(f"plugin {info.name!r} has an {info.error}; fix the plugin's hook signature "
                                 f"or uninstall it (see `tlbench plugins`)")


def _one_line(exc: BaseException) -> str:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last.replace("\n", " ")
