"""An in-memory search backend for the unmodified argilla-server 2.8, for tests on loopback.

Argilla's server needs Elasticsearch or OpenSearch, and neither can be installed from the
registries this project may use. The server keeps everything that is specific to those engines
behind the abstract low-level methods of
``argilla_server.search_engine.commons.BaseElasticAndOpenSearchEngine`` (create an index, bulk
index, update a document, search with a query DSL body, ...). This module implements exactly those
methods over Python dicts and registers the class in the server's own registry under the name
``memory``, so ``ARGILLA_SEARCH_ENGINE=memory`` selects it. Nothing in the server is patched.

Scope: the query DSL subset that ``commons.py`` of argilla-server 2.8.0 builds (bool, term(s),
range, exists, ids, nested, function_score/random_score, simple_query_string, terms/value_count/
stats aggregations, field sorts with nested filters, kNN over dense vectors) and the three painless
scripts it sends. Anything else raises ``NotImplementedError`` so that a server upgrade that
needs more fails loudly instead of returning wrong results.

Documents are stored the way Elasticsearch returns ``_source``: JSON values (UUIDs, enums and
datetimes become strings), so comparisons behave like keyword fields.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Dict, List, Optional

from argilla_server.models import VectorSettings
from argilla_server.search_engine import SearchEngine
from argilla_server.search_engine.commons import BaseElasticAndOpenSearchEngine, es_field_for_vector_settings

from query_dsl import (  # a sibling module: the server is started with this directory on sys.path
    DEFAULT_SIZE, Index, aggregate, as_list, cosine, evaluate, field_values, merge, run_script, search_response,
    sort_key_for, to_json_value,
)

ENGINE_NAME = "memory"

# One store per server process: the server creates a new engine object for every request.
_INDICES: Dict[str, Index] = {}


@SearchEngine.register(engine_name=ENGINE_NAME)
@dataclasses.dataclass
class InMemorySearchEngine(BaseElasticAndOpenSearchEngine):
    """The server's Elasticsearch engine with its client calls answered from process memory."""

    number_of_shards: int = 1
    number_of_replicas: int = 0

    def __post_init__(self) -> None:
        # The base class declares an Elasticsearch/OpenSearch client; there is none here.
        self.client = None  # type: ignore[assignment]

    @classmethod
    async def new_instance(cls) -> "InMemorySearchEngine":
        return cls()

    async def close(self) -> None:
        """Nothing to release: the store outlives engine objects by design."""

    async def ping(self) -> bool:
        return True

    async def info(self) -> dict:
        return {"distribution": ENGINE_NAME, "indices": len(_INDICES)}

    # --- the abstract low-level methods of BaseElasticAndOpenSearchEngine -----------------

    def _mapping_for_vector_settings(self, vector_settings: VectorSettings) -> dict:
        return {
            es_field_for_vector_settings(vector_settings): {
                "type": "dense_vector",
                "dims": vector_settings.dimensions,
                "similarity": "cosine",
            }
        }

    async def _request_similarity_search(
        self,
        index: str,
        vector_settings: VectorSettings,
        value: List[float],
        k: int,
        excluded_id: Optional[uuid.UUID] = None,
        query_filters: Optional[List[dict]] = None,
    ) -> dict:
        field = es_field_for_vector_settings(vector_settings)
        scored = []
        for doc_id, doc in self._index(index).docs.items():
            if excluded_id is not None and doc_id == str(excluded_id):
                continue
            # The Elasticsearch engine requires every filter to match (minimum_should_match = all).
            if any(evaluate(query, doc) is None for query in query_filters or []):
                continue
            vectors = field_values(doc, field)
            if len(vectors) != len(value):
                continue
            # Elasticsearch reports cosine similarity as (1 + cos) / 2.
            scored.append((doc_id, (1.0 + cosine(vectors, value)) / 2.0))
        scored.sort(key=lambda item: -item[1])
        return search_response(scored[:k], total=min(len(scored), k))

    async def _create_index_request(self, index_name: str, mappings: dict, settings: dict) -> None:
        if index_name in _INDICES:
            raise RuntimeError(f"index {index_name} already exists")
        _INDICES[index_name] = Index(mappings=mappings, settings=settings)

    async def _delete_index_request(self, index_name: str) -> None:
        _INDICES.pop(index_name, None)

    async def _update_document_request(self, index_name: str, id: str, body: dict) -> None:
        docs = self._index(index_name).docs
        if id not in docs:
            raise KeyError(f"document {id} not found in {index_name}")
        if "doc" in body:
            merge(docs[id], to_json_value(body["doc"]))
        elif "script" in body:
            run_script(docs[id], body["script"])
        else:
            raise NotImplementedError(f"in-memory search: unsupported update body {sorted(body)}")

    async def put_index_mapping_request(self, index: str, mappings: dict) -> None:
        self._index(index).mappings.setdefault("properties", {}).update(mappings)

    async def _index_search_request(
        self,
        index: str,
        query: dict,
        size: Optional[int] = None,
        from_: Optional[int] = None,
        sort: Optional[dict] = None,
        aggregations: Optional[dict] = None,
    ) -> dict:
        matched: List[tuple[str, float, Dict[str, Any]]] = []
        for doc_id, doc in self._index(index).docs.items():
            score = evaluate(query, doc)
            if score is not None:
                matched.append((doc_id, score, doc))

        if sort:
            ordered = matched
            # Stable passes from the least to the most significant clause; missing values last.
            for clause in reversed(as_list(sort)):
                (field, spec), = clause.items()
                key, descending = sort_key_for(field, spec)
                keyed = [(key(item[2]), item) for item in ordered]
                present = [pair for pair in keyed if pair[0] is not None]
                present.sort(key=lambda pair: pair[0], reverse=descending)
                ordered = [item for _, item in present] + [item for k, item in keyed if k is None]
        else:
            ordered = sorted(matched, key=lambda item: -item[1])

        start = from_ or 0
        stop = start + (DEFAULT_SIZE if size is None else size)
        hits = [(doc_id, score) for doc_id, score, _ in ordered[start:stop]]
        aggregation_results = None
        if aggregations:
            docs = [doc for _, _, doc in matched]
            aggregation_results = {name: aggregate(name, spec, docs) for name, spec in aggregations.items()}
        return search_response(hits, total=len(matched), aggregations=aggregation_results)

    async def _index_exists_request(self, index_name: str) -> bool:
        return index_name in _INDICES

    async def _bulk_op_request(self, actions: List[Dict[str, Any]]) -> None:
        for action in actions:
            docs = self._index(action["_index"]).docs
            doc_id = str(action["_id"])
            operation = action.get("_op_type", "index")
            if operation == "index":
                docs[doc_id] = to_json_value({k: v for k, v in action.items() if not k.startswith("_")})
            elif operation == "delete":
                docs.pop(doc_id, None)
            else:
                raise NotImplementedError(f"in-memory search: unsupported bulk operation {operation!r}")

    @staticmethod
    def _index(index_name: str) -> Index:
        try:
            return _INDICES[index_name]
        except KeyError:
            # Elasticsearch answers index_not_found_exception; surface it the same way.
            raise KeyError(f"index {index_name} not found") from None
