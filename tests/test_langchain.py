"""LangChain's OpenAI integration against ``mullama serve``: chat, streaming, tools, structured output and
embeddings, as a LangChain user writes them.  Expectations come from the library in the same run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mullama import Context, EmbeddingGenerator, Model, SamplerParams
from mullama.server import ServeOptions

from .test_server import KEY, Server

langchain_openai = pytest.importorskip("langchain_openai")
pydantic = pytest.importorskip("pydantic")


@pytest.fixture(scope="module")
def server(smollm_path: Path, minilm_path: Path) -> Iterator[Server]:
    s = Server(ServeOptions(model=smollm_path, parallel=2, n_ctx=1024, embedding_model=minilm_path, api_key=KEY,
                            model_id="smollm2"))
    try:
        yield s
    finally:
        s.stop()


def chat(server: Server, max_tokens: int) -> object:
    return langchain_openai.ChatOpenAI(base_url=f"{server.base}/v1", api_key=KEY, model="smollm2", temperature=0,
                                       max_tokens=max_tokens, max_retries=0)


def test_invoke_and_stream_equal_the_library(server: Server, model: Model) -> None:
    with Context(model, n_ctx=1024) as ctx:
        expected = ctx.generate(model.apply_chat_template([{"role": "user", "content": "Name a color."}]),
                                max_tokens=20, params=SamplerParams.greedy())
    llm = chat(server, 20)
    assert llm.invoke("Name a color.").content == expected  # type: ignore[attr-defined]
    assert "".join(c.content for c in llm.stream("Name a color.")) == expected  # type: ignore[attr-defined]


def test_bind_tools_and_structured_output(server: Server) -> None:
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"
    msg = chat(server, 80).bind_tools([get_weather], tool_choice="get_weather").invoke(  # type: ignore[attr-defined]
        "What is the weather in Paris?")
    assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
    assert isinstance(msg.tool_calls[0]["args"]["city"], str)

    class Person(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        name: str
        age: int
    for method in ("json_schema", "json_mode"):
        person = chat(server, 80).with_structured_output(Person, method=method).invoke(  # type: ignore[attr-defined]
            "Invent a person. Answer in JSON with a name and an age.")
        assert isinstance(person, Person) and isinstance(person.age, int), (method, person)


def test_embeddings(server: Server, minilm_path: Path) -> None:
    texts = ["The cat sat on the mat.", "Quantum computers use qubits."]
    # LangChain's default (check_embedding_ctx_length=True) sends OpenAI's tiktoken ids, which need
    # tiktoken's encoding file from the network; with False it sends the text, as it must for any
    # model other than OpenAI's (the server's error for foreign ids says so: test_server_openai.py)
    emb = langchain_openai.OpenAIEmbeddings(base_url=f"{server.base}/v1", api_key=KEY, model="all-MiniLM-L6-v2-f16",
                                            check_embedding_ctx_length=False, max_retries=0)
    got = np.array(emb.embed_documents(texts), dtype=np.float32)
    with EmbeddingGenerator(Model.load(minilm_path)) as gen:
        want = gen.embed_matrix(texts)
    assert np.einsum("ij,ij->i", got, want).min() > 0.99999
    assert np.dot(emb.embed_query(texts[0]), want[0]) > 0.99999
    assert json.dumps(got.shape) == "[2, 384]"
