"""One module per `autoembed` verb."""
