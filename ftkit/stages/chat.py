"""Talk to a run's models: the base, a tuned stage's (merged as eval loads it) or the exported folder.

Replies use the run's chat template and the eval stage's settings as it ran them (`eval.max_new_tokens` fitted to
the answers where `auto`, `eval.temperature`, `eval.stop`), and by default the system prompt that the test prompts
share. A greedy reply to a test prompt is the eval stage's prediction for it. `ftkit chat` is the terminal's way in;
`answers` is the notebooks'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ftkit.core import rundir
from ftkit.core.rows import shared_system, with_lengths
from ftkit.models import loader
from ftkit.models.generation import generate
from ftkit.recipe import fitted, load

MODELS = ("base", "sft", "rl", "export")


@dataclass
class Session:
    """A model ready to answer, with the run's settings; `history` holds the conversation so far."""

    name: str
    model: object
    tokenizer: object
    system: str | None
    temperature: float
    max_new_tokens: int
    stop: tuple = ()
    history: list = field(default_factory=list)

    def messages(self, prompt: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": prompt}]

    def reply(self, prompt: str, streamer=None) -> str:
        """The model's reply to `prompt` after the conversation so far, which it then joins."""
        if self.temperature > 0:
            torch.seed()  # reseeds from the system: a fresh draw each time, as a chat would
        text = generate(self.model, self.tokenizer, [self.messages(prompt)], 1, self.max_new_tokens, self.temperature,
                        stop=self.stop, streamer=streamer)[0]
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
        return text

    def reset(self) -> None:
        self.history = []


def default_model(run_dir: str | Path) -> str:
    """The last trained model the run holds (rl, then sft), else the base model."""
    return next((name for name in ("rl", "sft") if rundir.tuned_dir(run_dir, name) is not None), "base")


def open_session(run_dir: str | Path, name: str | None = None) -> Session:
    """A Session with the run's `name` model (default: `default_model`). Refuses a model the run does not hold,
    naming the ones it does."""
    run_dir = Path(run_dir)
    cfg = fitted(load(rundir.path(run_dir, rundir.RECIPE)), run_dir)
    name = name or default_model(run_dir)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: one of {', '.join(MODELS)}")
    held = ["base"] + [m for m in ("sft", "rl") if rundir.tuned_dir(run_dir, m) is not None] + (
        ["export"] if rundir.export_dir(run_dir, "merged").is_dir() else [])
    if name not in held:
        raise FileNotFoundError(f"{run_dir} holds no {name} model (it holds: {', '.join(held)}); run its stage first "
                                f"or choose one of these with --model")
    if name == "export":
        model, tokenizer = _exported(cfg, run_dir)
    else:
        model, tokenizer = loader.load(cfg.model, tuned=rundir.tuned_dir(run_dir, name) if name != "base" else None,
                                       use="generation")
    rows = rundir.load_split(run_dir, "test", empty_ok=True)
    cfg = with_lengths(cfg, rundir.load_split(run_dir, "train", empty_ok=True) + rows, tokenizer)  # as eval ran
    return Session(name, model, tokenizer, shared_system(rows) if rows else None, cfg.eval.temperature,
                   cfg.eval.max_new_tokens, tuple(cfg.eval.stop))


def _exported(cfg, run_dir: Path):
    """export/merged loaded with plain transformers, in the dtype eval generated in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = rundir.export_dir(run_dir, "merged")
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=loader.DTYPES[loader.dtype_name(cfg.model,
                                                                                               "generation")])
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), AutoTokenizer.from_pretrained(merged)


def answers(run_dir: str | Path, prompts: str | list[str], name: str | None = None) -> list[dict]:
    """Each prompt (a list, or a text with one a line) answered on its own, with no conversation between them:
    [{model, prompt, reply}]."""
    if isinstance(prompts, str):
        prompts = [line for line in prompts.splitlines() if line.strip()]
    if not prompts:
        return []
    session = open_session(run_dir, name)
    out = []
    for prompt in prompts:
        session.reset()
        out.append({"model": session.name, "prompt": prompt, "reply": session.reply(prompt)})
    return out


HELP = ("/reset forgets the conversation · /system TEXT sets the system prompt (and resets) · /temp T sets the "
        "temperature (0: greedy) · /quit (or Ctrl-D) ends")


def interact(session: Session, read=input, write=print) -> None:
    """A conversation in the terminal: each reply streamed as it is generated, and the commands in HELP."""
    from transformers import TextStreamer

    write(f"ftkit chat: the {session.name} model, system prompt {session.system!r}, temperature "
          f"{session.temperature}, at most {session.max_new_tokens} new tokens a reply\n{HELP}")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            return
        command, _, rest = line.partition(" ")
        if command == "/quit":
            return
        if command == "/reset":
            session.reset()
            write("(conversation forgotten)")
        elif command == "/system":
            session.system = rest.strip() or None
            session.reset()
            write(f"(system prompt {session.system!r}; conversation forgotten)")
        elif command == "/temp":
            try:
                session.temperature = max(0.0, float(rest))
                write(f"(temperature {session.temperature})")
            except ValueError:
                write(f"(/temp takes a number, e.g. /temp 0.7; got {rest!r})")
        elif command.startswith("/"):
            write(f"(unknown command {command}; {HELP})")
        elif line:
            write("model> ", end="")
            session.reply(line, streamer=TextStreamer(session.tokenizer, skip_prompt=True, skip_special_tokens=True))
