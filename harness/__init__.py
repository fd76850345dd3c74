"""The real things that tests and benchmarks drive: the rktlet daemon and
containerd in temporary directories, local registries (real and fake), test
networks and namespaces, the images pushed to them, crictl, and helpers to
make, wait for and clean up pods and processes.

``tests/`` and ``bench/`` both import it; it is not part of the installed
package.
"""
