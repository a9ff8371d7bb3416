"""A report section plugin: every seed's test top-1 per configuration, as a table and a plot (`tlbench report`)."""
import html
from collections import defaultdict

from tlbench import ReportSection, hookimpl
from tlbench.record_fields import get


def render(context):
    by_configuration = defaultdict(dict)
    for record in context.records:  # the dataset's records as JSON dicts, ok and failed
        if get(record, "status") == "ok":
            by_configuration[get(record, "trial.label")][get(record, "trial.seed")] = get(record, "metrics.test_top1")
    if not by_configuration:
        return ""  # nothing to show: the section is left out
    import matplotlib.pyplot as plt  # the `report` extra; imported only when a report is drawn

    fig, ax = plt.subplots(figsize=(6, 0.4 + 0.35 * len(by_configuration)))
    rows = []
    for y, (label, seeds) in enumerate(sorted(by_configuration.items())):
        ax.plot([100 * v for v in seeds.values()], [y] * len(seeds), "o")
        cells = ", ".join(f"{seed}: {100 * value:.1f}" for seed, value in sorted(seeds.items()))
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{cells}</td></tr>")
    ax.set_yticks(range(len(by_configuration)), sorted(by_configuration))
    ax.set_xlabel("test top-1 %")
    return ("<table><tr><th>configuration</th><th>seed: test top-1 %</th></tr>" + "".join(rows) + "</table>"
            + context.figure(fig, "test top-1 of every seed"))  # an inline SVG: the report links nothing


@hookimpl
def register_report_sections(register):
    register(ReportSection(name="seeds", title="Every seed", order=55, render=render))  # built-ins: 10 ... 100
