"""Answer with N reasoning branches in parallel, then a majority vote over their answers.

python examples/parallel_reasoning.py "What is 15 plus 27?" 4
"""

import sys

import anyio

import parafill
from parafill.planners.reasoning import ReasoningPlanner, extract_answer


async def main(question: str, branches: int = 4, tokens: int = 64) -> parafill.RunResult:
    planner = ReasoningPlanner(branches=branches, branch_tokens=tokens)
    result = await parafill.arun(question, planner=planner)
    for k in range(1, branches + 1):
        text = result.results[f"branch-{k}"].text
        print(f"[branch-{k}] answer: {extract_answer(text)}")
    print(*result.notes, sep="\n")  # the vote: each answer and its count
    print("\n" + result.answer)
    return result


if __name__ == "__main__":
    question = sys.argv[1] if len(sys.argv) > 1 else "What is 12 times 4?"
    anyio.run(main, question, int(sys.argv[2]) if len(sys.argv) > 2 else 4)
