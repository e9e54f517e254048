"""openwit's corpus pipeline (`openwit.pipeline`): the foundation (`core`), the text half's
stages (`text`), the image half's (`images`), the shards (`shards`), the jobs that compose
them (`jobs`) and the applications on top (`apps`). The README's map says where each stage
and command lives."""
