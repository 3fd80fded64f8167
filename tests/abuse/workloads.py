"""Simulated traffic for the abuse tests and benchmark: extraction runs and a natural workload.

Deterministic (seeded). The natural workload uses real benign prompts shipped in data/
(sources and licences in data/README.md): each key is a user or an app with its own habits,
retries of one prompt (a chat app's retry button) and a few prompts that many users ask.
"""

from __future__ import annotations

import gzip
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import orjson

# Real benign prompts shipped with the tests (sources and licences in data/README.md).
DATA = Path(__file__).resolve().parent / "data"
BENIGN_FILES = ("arena_hard_user_prompts", "mt_bench_questions", "gsm8k_test_questions",
                "self_instruct_seed_tasks", "humaneval_prompts", "awesome_chatgpt_prompts")

WORDS = ("apple bread river mountain window teacher garden bicycle candle doctor forest "
         "hammer island jacket kitchen ladder mirror needle orange pencil rabbit saddle "
         "tunnel violin wallet yellow anchor basket castle dragon engine feather").split()
LANGS = ("French German Spanish Italian Portuguese Dutch Polish Swedish Turkish Japanese "
         "Korean Chinese Russian Greek Finnish Czech").split()
COUNTRIES = ("France Germany Spain Italy Portugal Netherlands Poland Sweden Turkey Japan Korea "
             "China Russia Greece Finland Czechia Norway Denmark Austria Hungary Romania "
             "Bulgaria Egypt Kenya Nigeria Brazil Chile Peru Mexico Canada India Thailand").split()
TOPICS = ("photosynthesis inflation gravity democracy vaccines blockchain volcanoes tides "
          "recursion entropy evolution magnetism").split()
AUDIENCES = ("a child", "a high school student", "an engineer", "a lawyer", "a farmer")


@dataclass(frozen=True, slots=True)
class Call:
    """One simulated request: which key sends it, its text and its embedding inputs."""

    key: str
    text: str
    inputs: int = 0


def extraction_prompts(n: int, seed: int = 1) -> list[str]:
    """`n` prompts from five templates with varying slots, shuffled together (one scraper)."""
    rng = random.Random(seed)
    templates = [
        [f"Translate the word {w} into {lang}" for w in WORDS for lang in LANGS],
        [f"What is the capital of {c}?" for c in COUNTRIES],
        [f"Explain {t} to {a} in three sentences." for t in TOPICS for a in AUDIENCES],
        [f"Give me the {lang} word for {w} and use it in a sentence." for w in WORDS for lang in LANGS],
        [f"What is {a} multiplied by {b}?" for a in range(2, 60) for b in range(2, 60)],
    ]
    for t in templates:
        rng.shuffle(t)
    cycles = [itertools.cycle(t) for t in templates]
    return [next(cycles[rng.randrange(len(cycles))]) for _ in range(n)]


def embedding_batches(requests: int, per_request: int, seed: int = 2) -> list[list[str]]:
    """A bulk-embedding harvest: many distinct short inputs per request."""
    rng = random.Random(seed)
    return [[f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.randrange(10**6)}"
             for _ in range(per_request)] for _ in range(requests)]


def _rows(name: str) -> list[bytes]:
    return gzip.decompress((DATA / f"{name}.jsonl.gz").read_bytes()).splitlines()


@cache
def benign_prompts() -> tuple[str, ...]:
    """Every benign prompt of the shipped data files (label 0)."""
    out: list[str] = []
    for name in BENIGN_FILES:
        for line in _rows(name):
            row = orjson.loads(line)
            if row.get("label", 0) == 0 and row["text"].strip():
                out.append(row["text"])
    return tuple(out)


def natural_workload(total: int, keys: int, seed: int = 3) -> list[Call]:
    """`total` requests from `keys` keys: users with a favourite source, retries, popular prompts.

    Each key draws most prompts from one or two files (a math tutor app, a coding assistant,
    a writing helper), repeats a prompt now and then (retry), and asks popular prompts that
    other keys ask too. A few keys embed documents in small batches (a RAG app).
    """
    rng = random.Random(seed)
    pool = benign_prompts()
    by_file: list[list[str]] = []
    for name in BENIGN_FILES:
        texts = [orjson.loads(line)["text"] for line in _rows(name)]
        by_file.append(texts)
    popular = rng.sample(list(pool), 20)
    weights = [rng.paretovariate(1.2) for _ in range(keys)]  # a few heavy keys, many light ones
    calls: list[Call] = []
    habits = {k: rng.sample(range(len(by_file)), 2) for k in range(keys)}
    last: dict[int, str] = {}
    for _ in range(total):
        k = rng.choices(range(keys), weights)[0]
        key = f"user-{k:03d}"
        r = rng.random()
        if r < 0.08 and k in last:
            text = last[k]                                    # retry of the same prompt
        elif r < 0.15:
            text = rng.choice(popular)                        # what everybody asks
        elif r < 0.20 and k % 7 == 0:
            batch = rng.sample(list(pool), 8)                 # RAG app embedding documents
            calls.append(Call(key, "\n".join(batch), len(batch)))
            continue
        else:
            text = rng.choice(by_file[rng.choice(habits[k])])
        last[k] = text
        calls.append(Call(key, text))
    return calls


def chunks(items: list[Call], size: int) -> Iterator[list[Call]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
