"""Write a short Markdown document: outline, every section in parallel, intro written last.

python examples/write_document.py "How bees make honey" doc.md
"""

import sys

import anyio

import parafill
from parafill.planners.document import DocumentPlanner, OutlineLimits


async def main(topic: str, max_sections: int = 4, section_tokens: int = 96) -> str:
    planner = DocumentPlanner(
        OutlineLimits(max_sections=max_sections),
        section_tokens=section_tokens,
        summary_tokens=max(8, section_tokens // 4),
        frame_tokens=section_tokens,
    )
    async with parafill.stream(topic, planner=planner) as events:
        async for event in events:
            if isinstance(event, parafill.PlanGrew):
                print(event.note)  # the outline, or why it fell back to a direct answer
            elif isinstance(event, parafill.NodeFinished):
                print(f"[{event.result.id}] {event.result.tokens} tokens")
            elif isinstance(event, parafill.RunFinished):
                return planner.markdown(event.result)
    raise RuntimeError("run ended without a result")


if __name__ == "__main__":
    document = anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "How bees make honey")
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            f.write(document)
    else:
        print(document)
