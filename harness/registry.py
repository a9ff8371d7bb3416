"""Plugin discovery and the name registries: pluggy does the hook plumbing and signature validation; this module
checks what plugins register (type, unique name) and resolves names with "did you mean"."""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Mapping, TypeVar

import pluggy

from tlbench import hookspecs
from tlbench.errors import exception_line
from tlbench.publishing import LeaderboardFormat, ReportSection
from tlbench.requirements import missing_requirements
from tlbench.search_space import check_search_space
from tlbench.types import BackboneFamily, DatasetFamily, Executor, Strategy, Suite, UsageError
from tlbench.version import __version__

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
    "tlbench.plugins.delta",
    "tlbench.plugins.bss",
    "tlbench.plugins.mixup",
    "tlbench.plugins.swa",
    "tlbench.plugins.timm_backbones",
    "tlbench.plugins.torchvision_backbones",
    "tlbench.plugins.efficientnet_lite",
    "tlbench.plugins.fashion_mnist",
    "tlbench.plugins.digits",
    "tlbench.plugins.imagefolder",
    "tlbench.plugins.torchvision_datasets",
    "tlbench.plugins.synthetic",
    "tlbench.plugins.local_executor",
    "tlbench.plugins.process_executor",
    "tlbench.plugins.ray_executor",
    "tlbench.plugins.slurm_executor",
    "tlbench.plugins.leaderboard_formats",
    "tlbench.plugins.report_sections",
    "tlbench.plugins.suites",
)

T = TypeVar("T")
HOOK_NAMES = tuple(sorted(name for name in dir(hookspecs)
                          if hasattr(getattr(hookspecs, name), hookspecs.PROJECT_NAME + "_spec")))


@dataclass
class PluginInfo:
    name: str
    version: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    error: str | None = None  # why it failed to load, if it did


class Registry(Generic[T]):
    """Named objects of one kind. ``register`` validates; ``get`` resolves with "did you mean".

    A registration that is wrong (not the right type, no valid name, a name taken) is reported through
    ``on_problem(plugin, message)`` instead of raised, so one plugin's mistake does not break every command: the
    object is left out, and a name registered twice is withheld from both owners, so only runs that ask for it
    stop, with the message."""

    def __init__(self, kind: str, plural: str, check: Callable[[Any], T],
                 on_problem: Callable[[str, str], None] | None = None):
        self.kind = kind
        self.plural = plural
        self._check = check
        self._entries: dict[str, tuple[T, str]] = {}
        self._conflicts: dict[str, str] = {}  # name -> why it cannot be used (registered twice)
        self.current_plugin = "?"
        self._on_problem = on_problem

    def _problem(self, message: str) -> None:
        if self._on_problem is None:
            raise UsageError(message)
        self._on_problem(self.current_plugin, message)

    def register(self, obj: Any) -> None:
        try:
            item = self._check(obj)
        except UsageError as exc:
            self._problem(f"plugin {self.current_plugin!r}: {exc}")
            return
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name or ":" in name:
            self._problem(f"plugin {self.current_plugin!r} registered a {self.kind} without a valid name "
                          f"({name!r}); give it a non-empty `name` without ':'")
            return
        if name in self._entries or name in self._conflicts:
            owners = [self._entries.pop(name)[1]] if name in self._entries else []
            message = (f"{self.kind} name {name!r} is registered twice, by plugin "
                       f"{owners[0] if owners else '(another)'!r} and by plugin {self.current_plugin!r}; "
                       f"uninstall or rename one of them") if owners else self._conflicts[name]
            self._conflicts[name] = message
            for owner in owners:
                if self._on_problem is not None:
                    self._on_problem(owner, message)
            self._problem(message)
            return
        self._entries[name] = (item, self.current_plugin)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name][0]) for name in self.names()]

    def unavailable(self) -> dict[str, str]:
        """Name -> the install hint of the first optional package it lacks, for the objects that cannot run here."""
        missing = {name: missing_requirements(item) for name, item in self.items()}
        return {name: hints[0] for name, hints in missing.items() if hints}

    def owner(self, name: str) -> str:
        return self._entries[name][1]

    def get(self, name: str, hint: str = "") -> T:
        """The object registered as ``name``; a UsageError (one line with the fix) when the name is unknown, taken
        twice, or its object needs an optional package that is not installed."""
        if name in self._entries:
            item = self._entries[name][0]
            missing = missing_requirements(item)
            if missing:
                raise UsageError(f"{self.kind} {name!r} needs an optional package: {missing[0]}")
            return item
        if name in self._conflicts:
            raise UsageError(self._conflicts[name])
        raise UsageError(self.unknown_message(name, hint))

    def resolve(self, name: str, hint: str = "") -> tuple[T, str | None]:
        """A name with an optional argument: ``timm:resnet50`` -> (the timm family, "resnet50");
        ``efficientnet_lite0`` -> (that family, None). Checks that the family takes an argument exactly when given one."""
        family_name, sep, argument = name.partition(":")
        family = self.get(family_name, hint)
        takes_argument = bool(getattr(family, "takes_argument", False))
        if takes_argument and not argument:
            raise UsageError(f"{self.kind} {family_name!r} needs an argument: {family_name}:<...> "
                             f"(see `tlbench list {self.plural}`)")
        if not takes_argument and sep:
            raise UsageError(f"{self.kind} {family_name!r} takes no argument; use {family_name!r}")
        return family, (argument if sep else None)

    def unknown_message(self, name: str, hint: str = "") -> str:
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        suggestion = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(self.names()) or 'none'}"
        return f"unknown {self.kind} {name!r}{suggestion} (see `tlbench list {self.plural}`){hint}"


def _as_strategy(obj: Any) -> Strategy:
    if isinstance(obj, type) and issubclass(obj, Strategy):
        obj = obj()
    if not isinstance(obj, Strategy):
        raise UsageError(f"register_strategies got {obj!r}, which is not a tlbench.Strategy subclass or instance")
    check_search_space(obj)
    return obj


def _as_suite(obj: Any) -> Suite:
    if not isinstance(obj, Suite):
        raise UsageError(f"register_suites got {obj!r:.80}, which is not a tlbench.Suite(name, description, tasks)")
    obj.check()
    return obj


def _protocol_check(kind: str, protocol: type, members: tuple[str, ...],
                    extra: Callable[[Any], None] = lambda obj: None) -> Callable[[Any], Any]:
    def check(obj: Any) -> Any:
        if isinstance(obj, type):
            raise UsageError(f"register_{kind}s got the class {obj.__name__}; register an instance: "
                             f"register({obj.__name__}())")
        missing = [member for member in members if not hasattr(obj, member)]
        if missing:
            raise UsageError(f"register_{kind}s got {obj!r}, which is not a tlbench.{protocol.__name__} "
                             f"(missing: {', '.join(missing)})")
        extra(obj)
        return obj
    return check


# What the harness reads from every dataset's options; a family must give each a default (tlbench.splits has the
# checks and docs/guides/dataset.md the meaning).
REQUIRED_DATASET_DEFAULTS = ("train_size", "val_size", "test_size", "split_seed", "storage_size", "augment",
                             "image_size")


def _check_dataset_defaults(family: Any) -> None:
    defaults = family.defaults
    if not isinstance(defaults, Mapping):
        raise UsageError(f"dataset {getattr(family, 'name', family)!r}: `defaults` must be a dict of options, got "
                         f"{type(defaults).__name__}")
    missing = [key for key in REQUIRED_DATASET_DEFAULTS if key not in defaults]
    if missing:
        raise UsageError(f"dataset {getattr(family, 'name', family)!r} lacks required default(s) "
                         f"{', '.join(missing)}; every dataset family's `defaults` must hold "
                         f"{', '.join(REQUIRED_DATASET_DEFAULTS)} (see docs/guides/dataset.md)")


class Plugins:
    """Loads built-in and third-party plugins and collects what they register."""

    def __init__(self, load_third_party: bool | None = None):
        if load_third_party is None:
            load_third_party = os.environ.get(DISABLE_ENV, "").strip().lower() not in ("1", "true", "yes")
        self.load_third_party = load_third_party  # workers of a grid load the same plugin set
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.strategies: Registry[Strategy] = Registry("strategy", "strategies", _as_strategy, self._report)
        self.backbones: Registry[BackboneFamily] = Registry("backbone", "backbones", _protocol_check(
            "backbone", BackboneFamily, ("name", "description", "takes_argument", "build")), self._report)
        self.datasets: Registry[DatasetFamily] = Registry("dataset", "datasets", _protocol_check(
            "dataset", DatasetFamily, ("name", "description", "takes_argument", "defaults", "fingerprint", "load"),
            _check_dataset_defaults), self._report)
        self.executors: Registry[Executor] = Registry("executor", "executors", _protocol_check(
            "executor", Executor, ("name", "description", "execute")), self._report)
        self.leaderboard_formats: Registry[LeaderboardFormat] = Registry(
            "leaderboard format", "formats", _protocol_check(
                "leaderboard_format", LeaderboardFormat, ("name", "description", "render")), self._report)
        self.report_sections: Registry[ReportSection] = Registry("report section", "sections", _protocol_check(
            "report_section", ReportSection, ("name", "title", "order", "render")), self._report)
        self.suites: Registry[Suite] = Registry("suite", "suites", _as_suite, self._report)
        for module_name in DEFAULT_PLUGINS:
            self._add(importlib.import_module(module_name), module_name.rsplit(".", 1)[-1], __version__, True)
        if load_third_party:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                version = ep.dist.version if ep.dist else ""
                try:
                    plugin = ep.load()
                except Exception as exc:  # a broken third-party plugin must not break unrelated runs
                    self.info[ep.name] = PluginInfo(ep.name, version, False, error=exception_line(exc))
                    continue
                self._add(plugin, ep.name, version, False)
        self._collect()

    def _add(self, plugin: Any, name: str, version: str, builtin: bool) -> None:
        """Registers one plugin module with pluggy. Whatever is wrong with it (a hook name that is not a tlbench
        hook, a wrong signature, a name taken, no hook at all) is recorded against this plugin only."""
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except (pluggy.PluginValidationError, ValueError) as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self.info[name] = PluginInfo(name, version, builtin, error=self._invalid_hook_message(plugin, exc))
            return
        hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self.info[name] = PluginInfo(name, version, builtin, hooks)
        if not hooks:
            unmarked = [hook for hook in HOOK_NAMES if callable(getattr(plugin, hook, None))]
            self.info[name].error = (
                f"registers no tlbench hook: {', '.join(unmarked)} lack(s) @hookimpl (from tlbench import hookimpl)"
                if unmarked else f"registers no tlbench hook; decorate its hook functions ({', '.join(HOOK_NAMES)}) "
                                 f"with @hookimpl (from tlbench import hookimpl)")

    def _invalid_hook_message(self, plugin: Any, exc: Exception) -> str:
        if isinstance(exc, ValueError):  # pluggy: the name or the module is registered already
            return f"not loaded: {exception_line(exc)}"
        unknown = [attr for attr in dir(plugin) if attr not in HOOK_NAMES
                   and self.pm.parse_hookimpl_opts(plugin, attr) is not None]
        if unknown:
            close = difflib.get_close_matches(unknown[0], HOOK_NAMES, n=1, cutoff=0.5)
            fix = f"did you mean {close[0]!r}?" if close else f"tlbench hooks are {', '.join(HOOK_NAMES)}"
            return f"invalid hook implementation: {unknown[0]!r} is not a tlbench hook; {fix}"
        return f"invalid hook implementation: {exception_line(exc)}"

    def _report(self, plugin: str, message: str) -> None:
        """A problem found in what ``plugin`` registered: shown by `tlbench plugins`, in "unknown name" hints."""
        info = self.info.setdefault(plugin, PluginInfo(plugin, "", False))
        info.error = f"{info.error}; {message}" if info.error else message

    def _collect(self) -> None:
        hook_to_registry = {
            "register_strategies": self.strategies,
            "register_backbones": self.backbones,
            "register_datasets": self.datasets,
            "register_executors": self.executors,
            "register_leaderboard_formats": self.leaderboard_formats,
            "register_report_sections": self.report_sections,
            "register_suites": self.suites,
        }
        for hook_name, registry in hook_to_registry.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                registry.current_plugin = impl.plugin_name
                try:
                    impl.function(register=registry.register)
                except Exception as exc:  # a bug in one plugin's hook: that plugin's problem only
                    self._report(impl.plugin_name, f"its {hook_name} raised {exception_line(exc)}")

    def add_commands(self, cli: Any) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as exc:
                self._report(impl.plugin_name, f"its register_commands raised {exception_line(exc)}")

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
        """For `run --all`: "every registered strategy" is not every one while a plugin is broken, so refuse
        until it is fixed or uninstalled. Runs that name what they need are not stopped by other plugins."""
        for info in self.failures:
            fix = ("fix the plugin's hook signature or uninstall it" if info.error.startswith("invalid hook")
                   else "fix or uninstall it, or name the strategies with -s")
            raise UsageError(f"plugin {info.name!r} has a problem ({info.error}), so --all cannot run every "
                             f"strategy; {fix} (see `tlbench plugins`)")
