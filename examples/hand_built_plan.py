"""Build a plan by hand: two independent drafts, then a node that depends on both.

`{{id}}` in a prompt is replaced by that dependency's output. Independent nodes run in the
same forward passes; `merge` starts the step both drafts are done.
"""

import parafill
from parafill import Node, Plan


def build_plan(tokens: int = 48) -> Plan:
    return Plan(
        nodes=(
            Node("pros", "List two advantages of electric cars, one line each.", max_tokens=tokens),
            Node("cons", "List two drawbacks of electric cars, one line each.", max_tokens=tokens),
            Node(
                "merge",
                "Advantages:\n{{pros}}\n\nDrawbacks:\n{{cons}}\n\n"
                "In two sentences, should a city commuter buy an electric car?",
                deps=("pros", "cons"),
                max_tokens=tokens,
            ),
        ),
        answer=("merge",),
    )


if __name__ == "__main__":
    plan = build_plan()
    print(plan.to_json())  # plans round-trip to JSON: `parafill plan plan.json`
    result = parafill.run(plan)
    for node_id, r in result.results.items():
        print(f"--- {node_id} ({r.tokens} tokens, {r.seconds:.1f} s)\n{r.text}")
    print(f"\nforward passes: {result.forward_passes}, wall {result.seconds:.1f} s")
