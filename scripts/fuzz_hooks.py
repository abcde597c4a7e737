"""Schemathesis hooks for scripts/fuzz.sh.

A `min_position` beyond the log's head makes a query wait up to `wait_ms` and then
answer 503 `projection-behind`: the documented answer to "not yet", not a fault, yet a
5xx by status alone. So generated positions are lowered to 0 (always reached) where the
hook applies, and in the phases that bypass it a 503 whose problem type is exactly
`projection-behind`, for a request that asked for a `min_position`, is not counted as a
server error. Every other 5xx still fails the run. Malformed values (negative numbers,
text) are left alone: they must still be a 400.
"""

import json

import schemathesis

PROJECTION_BEHIND = "https://eventledger.dev/problems/projection-behind"


@schemathesis.hook
def map_query(context, query):
    if not isinstance(query, dict):
        return query
    position = query.get("min_position")
    if isinstance(position, int) and not isinstance(position, bool) and position > 0:
        query["min_position"] = 0
    return query


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure except the documented answer to a position not yet reached."""
    if response is None or response.status_code != 503:
        return True
    if not isinstance(case.query, dict) or "min_position" not in case.query:
        return True
    try:
        problem = json.loads(response.content)
    except ValueError:
        return True
    return not (isinstance(problem, dict) and problem.get("type") == PROJECTION_BEHIND)
