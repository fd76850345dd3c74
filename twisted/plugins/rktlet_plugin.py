"""twistd plugin: ``twistd -n rktlet``. The service lives in :mod:`rktlet.tap`."""

from twisted.application.service import ServiceMaker

rktlet = ServiceMaker("rktlet", "rktlet.tap", "Kubernetes CRI v1 runtime on runc, conmon and CNI", "rktlet")
