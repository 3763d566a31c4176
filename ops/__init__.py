"""Operations that run the whole chain: retrain from logged feedback and hot-reload the server."""
