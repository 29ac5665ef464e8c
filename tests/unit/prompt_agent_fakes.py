"""A scripted LangChain chat model for prompt-agent tests: answers through tool calls, in order."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field


def tool_call(name: str, **args: Any) -> AIMessage:
    """An AI message that calls tool `name` with `args` (how structured output arrives)."""
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{name}"}])


class ScriptedChatModel(FakeMessagesListChatModel):
    """Returns `responses` one per call (an Exception instance is raised); records what it saw."""

    responses: list[Any]  # messages, or exceptions to raise
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    bound_tools: list[str] = Field(default_factory=list)

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        self.bound_tools.extend(convert_to_openai_tool(t)["function"]["name"] for t in tools)
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], tool_choice=tool_choice)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.calls.append(list(messages))
        if len(self.calls) > len(self.responses):
            raise AssertionError(f"script exhausted after {len(self.responses)} responses")
        response = self.responses[len(self.calls) - 1]
        if isinstance(response, Exception):
            raise response
        return ChatResult(generations=[ChatGeneration(message=response)])


GOOD_CONCEPT = (
    "A calm portrait of a sailor standing on a quiet pier at dawn, soft mist over still water, "
    "a palette of teal, pearl white and pale gold, painted as a luminous watercolor with gentle "
    "window light, the mood serene and reflective, the gaze resting on the distant horizon line."
)
GOOD_KEYWORDS = {
    "themes": ["tranquility", "the sea", "reflection"],
    "colors": ["teal", "pearl white", "pale gold"],
    "styles": ["impressionist", "soft window light", "minimalist"],
    "mediums": ["watercolor painting", "gouache", "35mm film photograph"],
    "subjects": ["sailor", "fisher", "lighthouse keeper"],
    "emotions": ["serene", "calm", "contemplative"],
    "time": ["dawn", "morning mist", "blue hour"],
    "places": ["quiet pier", "calm sea", "harbor"],
}
GOOD_CHOICE = ["serene", "calm sea", "teal", "watercolor painting", "sailor", "dawn", "tranquility",
               "pearl white", "soft window light", "morning mist", "quiet pier", "contemplative",
               "impressionist", "the sea", "pale gold"]


def good_script() -> list[AIMessage]:
    """Three valid answers: concept, keywords, choice."""
    return [tool_call("PortraitConcept", concept=GOOD_CONCEPT),
            tool_call("PortraitKeywords", **GOOD_KEYWORDS),
            tool_call("ChosenKeywords", chosen=GOOD_CHOICE)]
