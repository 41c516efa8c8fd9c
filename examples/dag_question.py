"""Plan a question as steps that use earlier results ($1, $2), run them as a DAG, print it.

python examples/dag_question.py "Which is heavier, an elephant or a blue whale?"
"""

import sys

import anyio

import parafill
from parafill.planners.dag import DagPlanner


async def main(question: str, step_tokens: int = 48, join_tokens: int = 96) -> parafill.RunResult:
    planner = DagPlanner(step_tokens=step_tokens, join_tokens=join_tokens, direct_tokens=96)
    result = await parafill.arun(question, planner=planner)
    for node in result.plan.nodes[1:]:  # the grown steps (or the direct fallback)
        uses = ", ".join(node.deps) if node.deps else "nothing"
        print(f"[{node.id}] uses {uses}: {result.results[node.id].text.strip()[:70]}")
    print("\n" + result.answer)
    print(*result.notes, sep="\n")
    return result


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "Which is older, Rome or Paris?")
