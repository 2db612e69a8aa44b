"""The Elasticsearch query DSL subset that argilla-server 2.8 sends, evaluated over Python dicts.

The pure half of :mod:`memory_search_engine`: matching (bool, term(s), range, exists, ids,
nested, function_score/random_score, simple_query_string), sorting, aggregations, the three
painless scripts, and the response shapes. Anything else raises ``NotImplementedError``.
Documents are JSON values, as Elasticsearch returns ``_source``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import fnmatch
import hashlib
import json
import math
import re
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional

# Elasticsearch's default page size when a search sends no `size`.
DEFAULT_SIZE = 10


def _json_default(value: Any) -> Any:
    """Encodes values the way the Elasticsearch client serialises them."""
    if isinstance(value, (_dt.datetime, _dt.date)):
        # Fixed-width timestamps keep string order equal to time order.
        if isinstance(value, _dt.datetime):
            return value.isoformat(timespec="microseconds")
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"cannot store {type(value).__name__} in the in-memory index")


def to_json_value(value: Any) -> Any:
    """Returns ``value`` as it would come back from Elasticsearch's ``_source``."""
    return json.loads(json.dumps(value, default=_json_default))


def field_values(doc: Dict[str, Any], path: str) -> List[Any]:
    """All non-null values at a dotted ``path``; arrays are flattened (Elasticsearch multi-values)."""
    current: List[Any] = [doc]
    for part in path.split("."):
        found: List[Any] = []
        for node in current:
            if isinstance(node, dict) and part in node:
                value = node[part]
                found.extend(value if isinstance(value, list) else [value])
        current = found
    return [value for value in current if value is not None]


def _leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted path, value) for every scalar in a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value, prefix)
    elif node is not None:
        yield prefix[:-1], node


def _same(a: Any, b: Any) -> bool:
    """Keyword/number equality with Elasticsearch's coercion of numeric strings."""
    if a == b:
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return False


def _compare_key(value: Any) -> tuple:
    """Sort key that never compares numbers with strings."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _in_range(value: Any, spec: Dict[str, Any]) -> bool:
    bounds = {op: to_json_value(bound) for op, bound in spec.items() if op in ("gte", "gt", "lte", "lt")}
    try:
        if "gte" in bounds and not _compare_key(value) >= _compare_key(bounds["gte"]):
            return False
        if "gt" in bounds and not _compare_key(value) > _compare_key(bounds["gt"]):
            return False
        if "lte" in bounds and not _compare_key(value) <= _compare_key(bounds["lte"]):
            return False
        if "lt" in bounds and not _compare_key(value) < _compare_key(bounds["lt"]):
            return False
    except TypeError:
        return False
    return True


_TOKEN = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> List[str]:
    return [token.lower() for token in _TOKEN.findall(text)]


def _text_score(doc: Dict[str, Any], spec: Dict[str, Any]) -> Optional[float]:
    """``simple_query_string`` with AND semantics: phrases, ``-term`` and ``prefix*``.

    Enough for the UI's search box; operators ``|``, ``()`` and ``~`` are not interpreted
    (their characters are ignored), which only makes matches stricter.
    """
    patterns = spec.get("fields") or ["*"]
    texts = [
        str(value)
        for path, value in _leaves(doc)
        if isinstance(value, str) and any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)
    ]
    haystack = " ".join(texts)
    words = _tokens(haystack)
    lowered = " ".join(words)
    query: str = spec["query"]
    score = 0.0
    for phrase in re.findall(r'"([^"]*)"', query):
        needle = " ".join(_tokens(phrase))
        if needle and needle not in lowered:
            return None
        score += 1.0
    for raw in re.sub(r'"[^"]*"', " ", query).split():
        negate = raw.startswith("-")
        prefix = raw.rstrip().endswith("*")
        for term in _tokens(raw):
            if prefix:
                hits = sum(1 for word in words if word.startswith(term))
            else:
                hits = words.count(term)
            if negate and hits:
                return None
            if not negate and not hits:
                return None
            score += hits
    return max(score, 1.0)


def _random_score(seed: str, doc_id: str) -> float:
    """Deterministic per (seed, document) value in [0, 1), like ``random_score``."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def evaluate(query: Dict[str, Any], doc: Dict[str, Any]) -> Optional[float]:
    """Score of ``doc`` for an Elasticsearch query body, or None when it does not match."""
    if len(query) != 1:
        raise NotImplementedError(f"in-memory search: expected one query clause, got {sorted(query)}")
    kind, spec = next(iter(query.items()))

    if kind == "match_all":
        return 1.0
    if kind == "bool":
        score = 0.0
        for clause in as_list(spec.get("must")):
            clause_score = evaluate(clause, doc)
            if clause_score is None:
                return None
            score += clause_score
        for clause in as_list(spec.get("filter")):
            if evaluate(clause, doc) is None:
                return None
        for clause in as_list(spec.get("must_not")):
            if evaluate(clause, doc) is not None:
                return None
        should = as_list(spec.get("should"))
        if should:
            scores = [s for s in (evaluate(clause, doc) for clause in should) if s is not None]
            # Without must/filter at least one should clause has to match (Elasticsearch default).
            default_minimum = 0 if (spec.get("must") or spec.get("filter")) else 1
            minimum = spec.get("minimum_should_match", default_minimum)
            if len(scores) < int(minimum):
                return None
            score += sum(scores)
        return score or 1.0
    if kind == "term":
        (field, value), = spec.items()
        if isinstance(value, dict):
            value = value["value"]
        value = to_json_value(value)
        return 1.0 if any(_same(v, value) for v in field_values(doc, field)) else None
    if kind == "terms":
        (field, values), = spec.items()
        wanted = to_json_value(list(values))
        return 1.0 if any(_same(v, w) for v in field_values(doc, field) for w in wanted) else None
    if kind == "range":
        (field, bounds), = spec.items()
        return 1.0 if any(_in_range(v, bounds) for v in field_values(doc, field)) else None
    if kind == "exists":
        return 1.0 if field_values(doc, spec["field"]) else None
    if kind == "ids":
        wanted = {str(v) for v in spec["values"]}
        return 1.0 if doc.get("id") in wanted else None
    if kind == "nested":
        path: str = spec["path"]
        scores = []
        for element in field_values(doc, path):
            # Re-embed the element at its path so inner clauses can use full field names.
            embedded: Any = element
            for part in reversed(path.split(".")):
                embedded = {part: embedded}
            element_score = evaluate(spec["query"], embedded)
            if element_score is not None:
                scores.append(element_score)
        if not scores:
            return None
        return sum(scores) / len(scores)
    if kind == "function_score":
        base = evaluate(spec.get("query", {"match_all": {}}), doc)
        if base is None:
            return None
        for function in spec.get("functions", []):
            if set(function) != {"random_score"}:
                raise NotImplementedError(f"in-memory search: unsupported score function {sorted(function)}")
            base *= _random_score(str(function["random_score"].get("seed", "")), doc["id"])
        return base
    if kind == "simple_query_string":
        return _text_score(doc, spec)
    raise NotImplementedError(f"in-memory search: unsupported query clause {kind!r}")


def _sort_values(doc: Dict[str, Any], field: str, spec: Dict[str, Any]) -> List[Any]:
    """Values a sort clause sees for ``doc``, honouring a nested path and filter."""
    nested = spec.get("nested")
    if not nested:
        return field_values(doc, field)
    values: List[Any] = []
    for element in field_values(doc, nested["path"]):
        embedded: Any = element
        for part in reversed(nested["path"].split(".")):
            embedded = {part: embedded}
        if "filter" in nested and evaluate(nested["filter"], embedded) is None:
            continue
        values.extend(field_values(embedded, field))
    return values


def sort_key_for(field: str, spec: Any) -> tuple[Callable[[Dict[str, Any]], Any], bool]:
    """(key function returning None for missing, descending?) for one sort clause."""
    if isinstance(spec, str):
        spec = {"order": spec}
    order = str(getattr(spec.get("order", "asc"), "value", spec.get("order", "asc")))
    descending = order == "desc"
    mode = spec.get("mode")

    def key(doc: Dict[str, Any]) -> Any:
        values = _sort_values(doc, field, spec)
        if not values:
            return None
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if mode == "avg" and numeric:
            return _compare_key(sum(values) / len(values))
        # Elasticsearch picks the smallest value ascending and the largest descending.
        keys = [_compare_key(v) for v in values]
        return max(keys) if descending else min(keys)

    return key, descending


@dataclasses.dataclass
class Index:
    mappings: Dict[str, Any]
    settings: Dict[str, Any]
    docs: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)


def merge(target: Dict[str, Any], update: Dict[str, Any]) -> None:
    """Partial-document update: objects merge recursively, everything else is replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value


_REMOVE_SUGGESTION = re.compile(r'^ctx\._source\["suggestions"\]\.remove\("([^"]+)"\)$')


def run_script(doc: Dict[str, Any], script: Any) -> None:
    """The three painless scripts argilla-server 2.8 sends, recognised by their text."""
    if isinstance(script, str):
        source, params = script, {}
    else:
        source, params = script["source"], to_json_value(script.get("params", {}))
    compact = " ".join(source.split())
    match = _REMOVE_SUGGESTION.match(compact)
    if match:
        (doc.get("suggestions") or {}).pop(match.group(1), None)
        return
    if "ctx._source.responses" in compact and "params.response" in compact:
        response = params["response"]
        kept = [r for r in doc.get("responses") or [] if r.get("id") != response["id"]]
        if "ctx._source.responses.add(params.response)" in compact:
            kept.append(response)
        doc["responses"] = kept
        return
    raise NotImplementedError(f"in-memory search: unsupported script {compact[:80]!r}")


def search_response(hits: List[tuple[str, float]], total: int, aggregations: Optional[dict] = None) -> dict:
    response: Dict[str, Any] = {
        "hits": {
            "total": {"value": total, "relation": "eq"},
            "hits": [{"_id": doc_id, "_score": score} for doc_id, score in hits],
        }
    }
    if aggregations is not None:
        response["aggregations"] = aggregations
    return response


def aggregate(name: str, spec: Dict[str, Any], docs: List[Dict[str, Any]]) -> Dict[str, Any]:
    (kind, options), = spec.items()
    field = options["field"]
    # Doc values are per-document sets, so a repeated value in one document counts once.
    per_doc = [list({json.dumps(v): v for v in field_values(doc, field)}.values()) for doc in docs]
    if kind == "terms":
        counts: Dict[str, Any] = {}
        for values in per_doc:
            for value in values:
                entry = counts.setdefault(json.dumps(value), {"key": value, "doc_count": 0})
                entry["doc_count"] += 1
        buckets = sorted(counts.values(), key=lambda b: (-b["doc_count"], _compare_key(b["key"])))
        return {"buckets": buckets[: options.get("size", 10)]}
    if kind == "value_count":
        return {"value": sum(len(values) for values in per_doc)}
    if kind == "stats":
        numbers = [v for values in per_doc for v in values if isinstance(v, (int, float))]
        if not numbers:
            return {"count": 0, "min": None, "max": None, "avg": None, "sum": 0.0}
        return {
            "count": len(numbers),
            "min": min(numbers),
            "max": max(numbers),
            "avg": sum(numbers) / len(numbers),
            "sum": float(sum(numbers)),
        }
    raise NotImplementedError(f"in-memory search: unsupported aggregation {kind!r} ({name})")


def cosine(a: List[float], b: List[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
