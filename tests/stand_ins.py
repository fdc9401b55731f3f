"""Inert stand-ins for the embedder and the vector store, for tests of the /v1 gateway path (which never
embeds or searches) that still compose the whole app."""


class NoStore:
    def sites(self):
        return []

    def count(self):
        return 0


class NoEmbedder:
    dimension = 2

    def embed(self, texts):
        return [[1.0, 0.0] for _ in texts]
