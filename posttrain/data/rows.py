"""One row of a source → the one schema every stage reads: `id`, `source`, `category`, `messages`, `answer`.

The public post-training sets keep their conversations in several layouts; a source names its layout
(`format`) and, where the columns differ from the defaults, where each part lives (`prompt_field`,
`answer_field`, ... as dotted paths into nested columns). What is normalised here, and why by hand:
`datasets` loads each layout as it is, and TRL's conversational formats assume the plain
`{role, content}` strings, so these few mappings are the project's own:
- a prompt is a string (`{"prompt": "..."}`) or a list of chat messages (DAPO-Math-17k, Skywork-OR1:
  `prompt: [{role, content}]`; NeMo-Gym records: `responses_create_params.input`);
- a message's content is a string or a list of typed parts (OpenAI's Responses API:
  `[{"type": "input_text", "text": ...}]`), joined into one string;
- the Responses API's `developer` role is the system turn under another name (OpenAI's own
  definition), so it is mapped to `system`, which every chat template renders; OLMo's `environment`
  turn (a tool's output) to `tool`.
A bad row is refused with where it is (file:line or source:row) and what was expected.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant", "tool")
# OpenAI's Responses API (NeMo-Gym records): developer messages are the system instructions; OLMo's chat
# format (Dolci): `environment` turns carry what a tool returned.
ROLE_ALIASES = {"developer": "system", "environment": "tool"}
TEXT_PART_TYPES = ("text", "input_text", "output_text")


class DataError(ValueError):
    """A mixture file or one of its rows is not what the pipeline expects."""


def field_value(row: dict, path: str) -> Any:
    """`row["a"]["b"]` for the dotted path "a.b"; None where any part is missing."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def normalise_row(row: dict, source, where: str, index: int) -> dict:
    """Map a raw row of `source` onto {id, source, category, messages, answer}; raise on a bad row."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if source.format == "messages":
        messages = field_value(row, source.messages_field)
        if messages is None:
            raise DataError(f"{where}: missing '{source.messages_field}' (format 'messages' needs a list of {{role, content}})")
        messages = chat_messages(messages, source.messages_field, where)
    else:
        messages = prompt_messages(field_value(row, source.prompt_field), source, where)
        if source.format == "prompt_completion":
            completion = field_value(row, source.completion_field)
            if not isinstance(completion, str) or not completion.strip():
                raise DataError(f"{where}: missing or empty '{source.completion_field}' (format 'prompt_completion')")
            messages.append({"role": "assistant", "content": completion})
    answer = field_value(row, source.answer_field)
    row_id = field_value(row, source.id_field)
    return {
        "id": f"{source.name}-{index}" if row_id is None else str(row_id),
        "source": source.name,
        "category": source.category or source.name,
        "messages": messages,
        "answer": None if answer is None else str(answer),
    }


def prompt_messages(prompt: Any, source, where: str) -> list[dict]:
    """A prompt given as a string (one user turn) or as a list of chat messages (system turns kept)."""
    name = source.prompt_field
    if isinstance(prompt, list):
        messages = chat_messages(prompt, name, where)
        if not any(m["role"] == "user" for m in messages):
            raise DataError(f"{where}: '{name}' holds chat messages but no user turn (roles: "
                            f"{[m['role'] for m in messages]})")
        return messages
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: missing or empty '{name}' (format '{source.format}'); expected a string or a list "
                        f"of {{role, content}} messages, got {prompt!r:.80}")
    return [{"role": "user", "content": prompt}]


def chat_messages(messages: Any, name: str, where: str) -> list[dict]:
    """A non-empty list of {role, content} with known roles and string (or text-part) content."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: '{name}' must be a non-empty list of {{role, content}}, got {messages!r:.80}")
    clean = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {j} must have 'role' and 'content'")
        role = ROLE_ALIASES.get(m["role"], m["role"])
        if role not in ROLES:
            raise DataError(f"{where}: message {j} has unknown role {m['role']!r}; expected one of {list(ROLES)} "
                            "(or 'developer', read as system; 'environment', read as tool)")
        content = message_text(m["content"], f"{where}: message {j}")
        if role == "assistant" and not content.strip():
            raise DataError(f"{where}: message {j} is an empty assistant turn")
        clean.append({"role": role, "content": content})
    return clean


def message_text(content: Any, where: str) -> str:
    """A message's text: a string, or the text parts of a list of typed parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(isinstance(p, dict) for p in content):
        kinds = {p.get("type") for p in content}
        if kinds <= set(TEXT_PART_TYPES) and all(isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
        raise DataError(f"{where}: content parts of type {sorted(map(str, kinds))}; only text parts "
                        f"({', '.join(TEXT_PART_TYPES)}) can be trained on")
    raise DataError(f"{where}: content must be a string or a list of text parts, got {type(content).__name__}")
