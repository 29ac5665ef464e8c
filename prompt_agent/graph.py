"""The LangGraph StateGraph: concept -> meta_keywords -> choose."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from .nodes import choose_node, concept_node, meta_keywords_node
from .schemas import AgentState


def build_graph(llm: Any = None, structured_method: str | None = None):
    """Compile the agent graph; llm=None runs every node on the offline path."""
    graph = StateGraph(AgentState)
    graph.add_node("concept", lambda state: concept_node(state, llm, structured_method))
    graph.add_node("meta_keywords", lambda state: meta_keywords_node(state, llm, structured_method))
    graph.add_node("choose", lambda state: choose_node(state, llm, structured_method))
    graph.add_edge(START, "concept")
    graph.add_edge("concept", "meta_keywords")
    graph.add_edge("meta_keywords", "choose")
    graph.add_edge("choose", END)
    return graph.compile()
