"""After the README's set-up block ran on a base install: every built-in strategy that this install can run has an
ok record, and each one it cannot run was named with the command that installs what it needs."""
import json
import sys
from pathlib import Path

from tlbench.registry import Plugins

results, log = Path(sys.argv[1]), Path(sys.argv[2]).read_text(encoding="utf-8", errors="replace")
strategies = Plugins(load_third_party=False).strategies
unavailable = strategies.unavailable()
runnable = [name for name in strategies.names() if name not in unavailable]
records = [json.loads(path.read_text()) for path in sorted(results.glob("*.json"))]
ok = {r["trial"]["strategy"] for r in records if r.get("status") == "ok"}
problems = [f"no ok record for {name}" for name in runnable if name not in ok]
problems += [f"{name} was not named as left out with its install command ({hint})" for name, hint in
             unavailable.items() if f"left out {name}: it needs an optional package: {hint}" not in log]
print(f"newcomer run: {len(ok)} strategies ok ({', '.join(sorted(ok))})")
for name, hint in unavailable.items():
    print(f"newcomer run: left out {name}: {hint}")
env = records[0]["environment"] if records else {}
print("newcomer run: processor", {k: env.get(k) for k in ("cpu_model", "cpu_count", "cpu_usable", "cpu_capability")})
if problems:
    sys.exit("newcomer run FAILED: " + "; ".join(problems))
