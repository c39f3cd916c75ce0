"""The policy learned so far (learn mode), as `wardtap propose` and the fleet console ask.

The daemon's baseline is copied and closed with the flows and devices still live in the
classifier, so asking never disturbs the learning; what deep dissection identified beats
MAC vendor and ports. The proposal is checked (it must load and must allow what was seen)
before anyone gets it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from appliance.common.records import device_dict, event_dict
from appliance.review.baseline import Baseline


@dataclass
class Proposal:
    text: str
    conversations: int
    rules: int
    left_out: int
    groups: int
    left_out_reasons: dict[str, int] = field(default_factory=dict)


def draft_proposal(baseline: Baseline, classifier: Any, identified: list[dict[str, Any]] | None,
                   where: str) -> Proposal:
    """The proposal from `baseline` plus the classifier's live state; raises WardtapError
    (naming `where`) when it would not load or would not allow what was seen."""
    from appliance.policy.writer import render
    from appliance.review.caution import assess
    from appliance.review.propose import check_allows, port_tokens, propose

    snapshot = copy.deepcopy(baseline)
    snapshot.close(event_dict(rec) for rec in classifier.flow_list())
    snapshot.add_devices(device_dict(rec) for rec in classifier.device_list())
    if identified is not None:
        snapshot.known = {d["mac"]: d for d in identified}
        snapshot.identified_by = "deep dissection (tshark on sampled packets)"
    view = snapshot.view()
    caution = assess(view, port_tokens(view), snapshot.identities(), snapshot.span())
    draft = propose(snapshot, "learned", view=view, caution=caution)
    text = render(draft)
    check_allows(text, snapshot, where, caution, view)
    return Proposal(text, len(snapshot.conversations),
                    rules=sum(1 for r in draft.rules if r.enabled and not r.disabled),
                    left_out=sum(1 for r in draft.rules if not r.enabled),
                    groups=len(draft.groups), left_out_reasons=dict(caution.counts()))
