"""Answer prompts with a trained router: the top-k models with scores, domains and families."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from cmrkit.data.records import strip_instruction_prefix
from cmrkit.data.registry import ModelRegistry
from cmrkit.router import Router

logger = logging.getLogger("cmrkit.route")


@torch.no_grad()
def route_prompts(
    router: Router,
    registry: ModelRegistry,
    prompts: Sequence[str],
    *,
    top_k: int = 5,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Rank the router's models for each prompt.

    Returns one ``{"prompt", "models": [{"model", "score", "domain", "family"}, ...]}`` per prompt,
    best first; ``score`` is the cosine similarity in [-1, 1]. Only models the router trained on
    can appear, so fewer than ``top_k`` come back when fewer are routable.
    """
    if top_k < 1:
        raise ValueError(f"invalid top_k {top_k}: it must be at least 1")
    router.eval()
    answers: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [_clean(prompt) for prompt in prompts[start : start + batch_size]]
        batch = router.encoder.tokenize(chunk)
        logits = router(batch)
        k = min(top_k, int(router.head.seen.sum()))
        scores, labels = logits.topk(k, dim=1)
        for prompt, row_scores, row_labels in zip(chunk, scores.tolist(), labels.tolist(), strict=True):
            models = []
            for score, label in zip(row_scores, row_labels, strict=True):
                card = registry.card(int(label))
                models.append(
                    {
                        "model": card.model_id,
                        "score": round(score * router.head.tau, 6),
                        "domain": card.domain,
                        "family": card.family,
                    }
                )
            answers.append({"prompt": prompt, "models": models})
    return answers


def _clean(prompt: str) -> str:
    return strip_instruction_prefix(prompt.strip())


def read_prompts(path: Path) -> list[str]:
    """Read prompts from a UTF-8 file of JSON Lines with a ``prompt`` field, or of plain text lines.

    Raises:
        ValueError: For invalid UTF-8, or a JSON line without a string ``prompt``, naming the
            file (and line).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return list(parse_prompt_lines(handle, source=str(path)))
    except UnicodeDecodeError as error:
        message = f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        raise ValueError(message) from error


def parse_prompt_lines(lines: Iterable[str], *, source: str) -> Iterator[str]:
    """Yield prompts from lines of JSON objects with a ``prompt`` field, or of plain text.

    A line that starts with ``{`` must be a JSON object with a string ``prompt``; anything else is
    taken as plain text. Blank lines are skipped. ``source`` names the input in error messages.
    """
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if not text.startswith("{"):
            yield text
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source}:{number}: invalid JSON ({error.msg})") from error
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{source}:{number}: missing or empty string field 'prompt'")
        yield prompt
