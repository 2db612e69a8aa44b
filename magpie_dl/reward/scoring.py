"""Reward scoring with ArmoRM semantics, batch-invariant by construction.

* Input: the reward model's chat template over [user, assistant], user and model
  text tokenised as text (no turn injection; the template's own BOS only), truncated at
  ``max_length`` tokens or the model's own limit (``max_position_embeddings``), whichever is
  smaller: the end is cut (the response's tail and the closing markup), the start kept,
  and the result says it was cut (``truncated``).
* Models: ArmoRM (``LlamaForRewardModelWithGating`` in ``config.json``) runs on this
  library's own implementation (:mod:`magpie_dl.reward.armorm`), never its shipped code; any
  other reward model loads as a one-label ``AutoModelForSequenceClassification``
  (remote code only when explicitly allowed).
* Output: ArmoRM's preference ``score``, read at the last real token (known from each
  sequence's length) and gated at the assistant header found from the tokenizer's chat
  template, with its per-objective rewards (``objectives``, :data:`armorm.OBJECTIVES`); an input
  whose assistant header was cut away gets no score and the reason ``gating_tokens_missing``.
  A one-label sequence classifier gives its raw logit (no sigmoid: unbounded, higher = preferred).
* Batches are grouped by length (little padding) and capped both in sequences and in
  padded tokens (``batch_tokens``): short inputs share a forward pass, long ones do not
  pad each other out. Right padding, so a sequence's score does not depend on its batch
  neighbours: with an attention mask, or without one when the model is causal (ArmoRM's
  Llama backbone by construction; a classifier when a probe at load time shows it): pads
  after a sequence change nothing in it. Unmasked batches take
  the attention kernels' causal path, which is faster than a materialised mask.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from magpie_dl.reward import armorm
from magpie_dl.templates.prompts import chat_token_ids, encode_markup, encode_texts
from magpie_dl.recipe.reasons import EMPTY_RESPONSE, FINISH_ERROR, GATING_TOKENS_MISSING, REQUEST_FAILED, non_finite_score

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SLOTS = ("\u2063MAGPIE_DL_SLOT_0\u2063", "\u2063MAGPIE_DL_SLOT_1\u2063")


def conversation_token_ids(
    tokenizer: PreTrainedTokenizerBase, user: str, assistant: str
) -> list[int]:
    """Chat-template ids of [user, assistant], the two texts encoded as plain text."""
    return conversations_token_ids(tokenizer, [(user, assistant)])[0]


def conversations_token_ids(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str | Sequence[Mapping[str, str]], str]]
) -> list[list[int]]:
    """Chat-template ids of many (prompt, response) pairs; a prompt is an instruction, or the
    messages of a conversation ending with a user turn (multi-turn), scored whole: ArmoRM's
    gating reads the last assistant header, which is the scored response's.
    """
    ids: list[list[int] | None] = [None] * len(pairs)
    single = [i for i, (prompt, _) in enumerate(pairs) if isinstance(prompt, str)]
    for i, found in zip(single, _single_turn_token_ids(tokenizer, [pairs[i] for i in single])):  # type: ignore[misc]
        ids[i] = found
    for i, (prompt, response) in enumerate(pairs):
        if ids[i] is None:
            messages = [*prompt, {"role": "assistant", "content": response}]  # type: ignore[misc]
            ids[i] = chat_token_ids(tokenizer, messages, add_generation_prompt=False)
    return ids  # type: ignore[return-value]


def _single_turn_token_ids(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]
) -> list[list[int]]:
    """:func:`conversation_token_ids` of many pairs, the same ids, at a fraction of the cost.

    The template is rendered and its markup encoded once, each distinct user text (the
    five responses of a row share one) once, and the texts in one tokenizer call per kind:
    at scale this is most of the reward step's CPU outside the model.
    """
    if not pairs:
        return []
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SLOTS[0]}, {"role": "assistant", "content": _SLOTS[1]}],
        tokenize=False,
    )
    head, _, rest = rendered.partition(_SLOTS[0])
    middle, _, tail = rest.partition(_SLOTS[1])
    if not rest or _SLOTS[1] not in rest:
        raise ValueError("the reward model's chat template must render both messages")
    head_ids, middle_ids, tail_ids = (encode_markup(tokenizer, part) for part in (head, middle, tail))
    users = list(dict.fromkeys(user for user, _ in pairs))
    user_ids = dict(zip(users, encode_texts(tokenizer, users)))
    assistant_ids = encode_texts(tokenizer, [assistant for _, assistant in pairs])
    return [
        head_ids + user_ids[user] + middle_ids + ids + tail_ids
        for (user, _), ids in zip(pairs, assistant_ids)
    ]


@dataclass(frozen=True)
class Scored:
    """One score, whether the input was truncated, and why the score is missing.

    ``objectives``: ArmoRM's per-objective rewards (its regression layer's outputs, in the
    order of :data:`magpie_dl.reward.armorm.OBJECTIVES`); None for other models.
    """

    score: float | None
    num_tokens: int
    truncated: bool
    error: str | None = None
    objectives: list[float] | None = None


def _has_text(text: str | None) -> bool:
    return bool(text and text.strip())


def responses_to_score(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """(row, response) positions worth scoring: responses with text whose generation did not
    fail (``finish_reasons``, when a row has them, says which failed)."""
    wanted = []
    for r, row in enumerate(rows):
        reasons = row.get("finish_reasons") or []
        for j, text in enumerate(row["generations"] or []):
            if _has_text(text) and (reasons[j] if j < len(reasons) else None) != FINISH_ERROR:
                wanted.append((r, j))
    return wanted


def set_ratings(
    rows: Sequence[dict[str, Any]], wanted: Sequence[tuple[int, int]], scored: Sequence[Scored]
) -> Counter[str]:
    """Write every row's ``ratings``, ``rating_truncated``, ``rating_errors`` and
    ``reward_objectives`` (ArmoRM's per-objective rewards, else None) from the scores of the
    ``wanted`` positions (:func:`responses_to_score`). A response not scored has no
    rating; an empty one says so (``empty_response``), and one whose request failed after
    its retries says that (``request_failed``). Returns why scored responses got no score,
    counted by reason."""
    for row in rows:
        texts = row["generations"] or []
        row["ratings"], row["rating_truncated"] = [None] * len(texts), [False] * len(texts)
        row["rating_errors"] = [_unscored(row, j, text) for j, text in enumerate(texts)]
        row["reward_objectives"] = [None] * len(texts)
    for (r, j), result in zip(wanted, scored):
        rows[r]["ratings"][j] = result.score
        rows[r]["rating_truncated"][j] = result.truncated
        rows[r]["rating_errors"][j] = result.error
        rows[r]["reward_objectives"][j] = result.objectives
    return Counter(result.error for result in scored if result.error)


def _unscored(row: Mapping[str, Any], j: int, text: str | None) -> str | None:
    """Why response ``j`` gets no score before any scoring (None: it is scored)."""
    if _has_text(text):
        return None
    reasons = row.get("finish_reasons") or []
    if row.get("request_error") and j < len(reasons) and reasons[j] == FINISH_ERROR:
        return REQUEST_FAILED
    return EMPTY_RESPONSE


class RewardScorer:
    """Scores (instruction, response) pairs with a reward model.

    Args:
        model: path or hub id (``RLHFlow/ArmoRM-Llama3-8B-v0.1`` in the recipe).
        max_length: inputs longer than this are cut to their first ``max_length`` tokens;
            a model with fewer positions (``max_position_embeddings``) lowers it at load.
        batch_size: at most this many sequences per forward pass.
        batch_tokens: at most this many padded tokens (sequences x longest) per forward
            pass; a sequence longer than this still gets a pass of its own.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device: torch device.
        trust_remote_code: explicit opt-in to a model's own code, for architectures this
            library does not implement (ArmoRM is implemented: it never needs it).
        mask_padding: pass an attention mask for padded batches; ``None`` decides at
            load time with a probe (see :meth:`pads_are_invisible`).
    """

    def __init__(
        self,
        model: str,
        *,
        max_length: int = 4096,
        batch_size: int = 16,
        batch_tokens: int = 32768,
        dtype: str = "auto",
        device: str = "cpu",
        trust_remote_code: bool = False,
        mask_padding: bool | None = None,
    ) -> None:
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {max_length}")
        self.model_path = model
        self.max_length = max_length
        self.batch_size = max(1, batch_size)
        self.batch_tokens = max(1, batch_tokens)
        self.dtype = dtype
        self.device = device
        self.trust_remote_code = trust_remote_code
        self.mask_padding = mask_padding
        self.model: Any = None
        self.tokenizer: Any = None
        # ArmoRM only: the chat-template ids its gating reads (None for a classifier).
        self.gating_ids: list[int] | None = None

    @property
    def is_armorm(self) -> bool:
        return self.gating_ids is not None

    def load(self) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        native = armorm.is_armorm(armorm.read_config(self.model_path))
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.model_path, trust_remote_code=self.trust_remote_code and not native
        )
        self.max_length = min(self.max_length, model_length_limit(armorm.read_config(self.model_path)))
        if self.tokenizer.pad_token_id is None:
            # Right padding is never read (masked, or after the read position of a causal
            # model), so any id works; the classifier needs one set.
            self.tokenizer.pad_token_id = self.tokenizer.eos_token_id
        if native:
            self.gating_ids = armorm.gating_token_ids(self.tokenizer)
            from magpie_dl.reward.armorm_modules import load  # torch modules: only when a model loads

            self.model = load(self.model_path, dtype=dtype, device=self.device)
            if self.mask_padding is None:
                self.mask_padding = False  # a Llama backbone: causal by construction
            return
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.model_path, dtype=dtype, trust_remote_code=self.trust_remote_code
        ).to(self.device)
        self.model.eval()
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if self.mask_padding is None:
            self.mask_padding = not self.pads_are_invisible()

    def pads_are_invisible(self) -> bool:
        """Whether right padding without a mask leaves a sequence's score unchanged.

        True for causal decoders (Llama, ArmoRM, Gemma...): no position sees the pads after
        it, and the score is read at the last real token. False for bidirectional encoders,
        which then always get a mask. Checked on a real conversation, several pad counts,
        within the rounding noise of the model's dtype (float32: 1e-4 relative).
        """
        import torch

        tolerance = 1e-4 if self.model.dtype == torch.float32 else 1e-2

        ids = conversation_token_ids(self.tokenizer, "Is this model causal?", "Let us find out.")
        gating = [self._gating_position(ids) or 0]
        with torch.inference_mode():
            alone = self.forward_batch([ids], gating, mask=False)[0]
            for pads in (1, 7, 33):
                padded = ids + [self.tokenizer.pad_token_id] * pads
                # Unmasked pads after the sequence, read at its last real token.
                value = self.forward_batch([padded], gating, mask=False, lengths=[len(ids)])[0]
                if not math.isclose(value, alone, rel_tol=tolerance, abs_tol=tolerance / 10):
                    return False
        return True

    def unload(self) -> None:
        self.model = None

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[Scored]:
        """Score each (user, assistant) pair."""
        return self.score_token_ids(conversations_token_ids(self.tokenizer, pairs))

    def score_token_ids(
        self, sequences: list[list[int]], done: Callable[[list[int], int], None] | None = None
    ) -> list[Scored]:
        """Score token-id sequences; the result is in input order.

        Each sequence is cut to its first ``max_length`` tokens. An ArmoRM input whose gating
        tokens were cut away by ``max_length`` is not run:
        its result carries no score and the reason ``gating_tokens_missing``. ``done`` is
        told, after each forward pass, which sequences (indices) it scored and their tokens.
        """
        import torch

        results: list[Scored | None] = [None] * len(sequences)
        clipped = [seq[: self.max_length] for seq in sequences]
        gating = [0] * len(clipped)
        todo: list[int] = []
        for i, seq in enumerate(clipped):
            position = self._gating_position(seq)
            if self.is_armorm and position is None:
                results[i] = Scored(None, len(seq), len(sequences[i]) > self.max_length, GATING_TOKENS_MISSING)
                continue
            gating[i] = position or 0
            todo.append(i)
        if done is not None and len(todo) < len(sequences):
            done([i for i, result in enumerate(results) if result is not None], 0)
        with torch.inference_mode():
            for chunk in plan_batches([len(clipped[i]) for i in todo], self.batch_size, self.batch_tokens):
                rows = [todo[k] for k in chunk]
                scores, objectives = self.forward_parts([clipped[i] for i in rows], [gating[i] for i in rows])
                for k, (i, value) in enumerate(zip(rows, scores)):
                    results[i] = Scored(
                        score=value if math.isfinite(value) else None,
                        num_tokens=len(clipped[i]),
                        truncated=len(sequences[i]) > self.max_length,
                        error=None if math.isfinite(value) else non_finite_score(value),
                        objectives=objectives[k] if objectives is not None else None,
                    )
                if done is not None:
                    done(rows, sum(len(clipped[i]) for i in rows))
        return results  # type: ignore[return-value]

    def forward_batch(
        self,
        rows: list[list[int]],
        gating: list[int],
        mask: bool | None = None,
        lengths: list[int] | None = None,
    ) -> list[float]:
        """Scores of one forward pass over ``rows``, right-padded to the longest.

        ``gating``: ArmoRM's gating position per row (ignored for a classifier).
        ``mask``: pass an attention mask (default: when rows differ in length and the
        model needs one). ``lengths``: where each row's real tokens end (default: its
        length). Call under ``torch.inference_mode()``.
        """
        return self.forward_parts(rows, gating, mask, lengths)[0]

    def forward_parts(
        self,
        rows: list[list[int]],
        gating: list[int],
        mask: bool | None = None,
        lengths: list[int] | None = None,
    ) -> tuple[list[float], list[list[float]] | None]:
        """:meth:`forward_batch`'s scores and ArmoRM's per-objective rewards (None for a classifier)."""
        import torch

        lengths = lengths or [len(row) for row in rows]
        width = max(len(row) for row in rows)
        flat = [token for row in rows for token in row + [self.tokenizer.pad_token_id] * (width - len(row))]
        ids = torch.tensor(flat, dtype=torch.long).view(len(rows), width).to(self.device)
        if mask is None:
            mask = bool(self.mask_padding) and min(lengths) != width
        attention = None
        if mask:
            attention = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long().to(self.device)
        if self.is_armorm:
            output = self.model(
                input_ids=ids,
                gating_index=torch.tensor(gating, device=self.device),
                last_index=torch.tensor(lengths, device=self.device) - 1,
                attention_mask=attention,
            )
            return output.score.float().cpu().tolist(), output.rewards.float().cpu().tolist()
        # A classifier finds its read position itself (the last non-pad id).
        output = self.model(input_ids=ids) if attention is None else self.model(input_ids=ids, attention_mask=attention)
        return extract_scores(output), None

    def _gating_position(self, ids: list[int]) -> int | None:
        return armorm.gating_position(ids, self.gating_ids) if self.gating_ids is not None else None


def model_length_limit(config: Mapping[str, Any]) -> int:
    """The longest input a model's raw ``config.json`` says it takes (``max_position_embeddings``,
    or a nested ``text_config``'s); unbounded when it says nothing."""
    for source in (config, config.get("text_config") or {}):
        value = source.get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    return 2**62


def plan_batches(lengths: list[int], batch_size: int, batch_tokens: int) -> list[list[int]]:
    """Indices grouped into forward passes: by length, each pass within both caps.

    Sorting by length keeps padding small; the token cap keeps a pass's padded size
    (count x longest) bounded, so many short sequences share a pass and a long one runs
    with few or no neighbours. Longest first: a pass that cannot fit in memory fails
    at once rather than at the end of a long run.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) == batch_size or (len(current) + 1) * width > batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def extract_scores(output: Any) -> list[float]:
    """ArmoRM's ``score`` when present, else the single logit of a sequence classifier."""
    score = getattr(output, "score", None)
    if score is None and isinstance(output, dict):
        score = output.get("score")
    if score is None:
        logits = output.logits
        if logits.shape[-1] != 1:
            raise ValueError(
                f"reward model returns {logits.shape[-1]} logits and no `score`; "
                "use a one-label sequence classifier or a model whose output has `score`"
            )
        score = logits[:, 0]
    return score.float().reshape(-1).cpu().tolist()
