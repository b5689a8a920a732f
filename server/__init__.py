"""gRPC poster similarity service: searcher core, servicer, hot reload, client."""
