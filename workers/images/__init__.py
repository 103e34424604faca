"""The image builder: the sandbox images (a debootstrapped base, one image per template).

- ``build``: ``build_all`` and the command line (``python -m workers.images build|list``).
- ``templates``: what an image says about itself (labels, language versions, the catalog a
  host announces), read from the engine.
- ``template_build``: building and labelling one template image.
- ``template_sources``: what is read from disk (the templates path, hashes, build arguments).
- ``rootfs``: the base image from a Debian mirror, without any registry.

Nothing here runs in a serving worker except ``templates`` (through the Docker backend). This
package and ``workers.backends.docker`` are the only ones that import the Docker SDK.
"""
