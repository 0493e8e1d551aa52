"""The client's resources (client.chat, client.completions, client.models, client.jobs,
client.facts, client.admin). Each is written once against a transport: on LlamaOrch a
method returns its result, on AsyncLlamaOrch an awaitable of the same result."""
