"""A leaderboard format plugin: a ranked list for chat messages (`tlbench leaderboard --format ranked`)."""
from tlbench import LeaderboardFormat, hookimpl


def render(table):
    lines = []
    for rank, row in enumerate(table.values, start=1):  # machine values, in the leaderboard's order
        test = row.get("test")  # accuracies are fractions: {"mean", "std", "ci95" (half-width), "n"}
        if test is None:
            lines.append(f"{rank}. {row['strategy']} ({row['backbone']}): no ok record")
            continue
        spread = f" ± {100 * test['ci95']:.1f}" if test["ci95"] is not None else ""
        lines.append(f"{rank}. {row['strategy']} ({row['backbone']}): {100 * test['mean']:.1f}%{spread} "
                     f"test top-1, n={test['n']}")
    return "\n".join(lines + [""] + table.notes)  # the notes say what the intervals cover: keep them


@hookimpl
def register_leaderboard_formats(register):
    register(LeaderboardFormat("ranked", "one line per configuration, best first, for chat messages", render))
