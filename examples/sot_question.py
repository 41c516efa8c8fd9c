"""Ask a question with skeleton-of-thought and stream the points as they fill.

    python examples/sot_question.py "What are the most effective ways to manage stress?"
"""

import sys

import anyio

import parafill


async def main(question: str, max_points: int = 5, point_tokens: int = 64) -> parafill.RunResult:
    planner = parafill.SkeletonPlanner(max_points=max_points, point_tokens=point_tokens)
    async with parafill.stream(question, planner=planner) as events:
        async for event in events:
            if isinstance(event, parafill.PlanGrew):
                print("skeleton:", *event.labels, sep="\n  ")
            elif isinstance(event, parafill.NodeFinished):
                print(f"[{event.result.id}] {event.result.tokens} tokens")
            elif isinstance(event, parafill.RunFinished):
                print("\n" + event.result.answer)
                return event.result
    raise RuntimeError("run ended without a result")


if __name__ == "__main__":
    default = "What are the most effective ways to manage stress?"
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else default)
