"""The OpenAI request shapes that both the gateway and the bundled model server read: a chat message
and its content parts. Kept apart from gateway/openai_schema.py, whose requests walk their texts for
inspection, so that the model server imports no inspection code.

Only the fields relied on are typed; everything else passes through as sent (`extra="allow"`).
Strict mode: a wrongly typed value is a client bug to report, not a value to coerce.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

PASS_THROUGH = ConfigDict(extra="allow", strict=True)


class ContentPart(BaseModel):
    model_config = PASS_THROUGH
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = PASS_THROUGH
    role: str
    content: str | list[ContentPart] | None = None
