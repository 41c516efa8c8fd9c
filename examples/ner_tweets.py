"""Named entities in tweets with PaDeLLM-NER (counts per label, then every mention in
parallel) next to the one-output AR baseline, on the embedded SmolLM2 + its NER adapter.

    python examples/ner_tweets.py "Heading to Boston to watch the Red Sox with Ben"
"""

import sys

import anyio

from parafill.backends.local import LocalBackend, LocalConfig
from parafill.planners.ner import ADAPTER, NerConfig, NerResult, extract

TWEETS = (
    "Empire State Building = ESB . Pretty bad storm here last evening .",
    "Engadget : Sky 3D enlists Stephen Fry to explain the technology",
)


async def main(
    texts: tuple[str, ...] = TWEETS, labels: tuple[str, ...] | None = None
) -> list[NerResult]:
    config = NerConfig(labels=labels) if labels else NerConfig()
    results = []
    async with LocalBackend.open(LocalConfig(adapter=str(ADAPTER))) as backend:
        for text in texts:
            print(text)
            for mode in ("parallel", "ar"):
                r = await extract(text, backend, config, mode)
                found = ", ".join(f"{e.label}: {e.text}" for e in r.entities) or "none"
                print(f"  {mode:8} {r.seconds:5.2f} s  {found}")
                results.append(r)
    return results


if __name__ == "__main__":
    anyio.run(main, tuple(sys.argv[1:]) or TWEETS)
