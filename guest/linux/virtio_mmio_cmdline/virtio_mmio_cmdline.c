// SPDX-License-Identifier: GPL-2.0
/*
 * Announce virtio-mmio devices to Linux's own virtio_mmio driver from a module parameter.
 *
 * Debian's kernels build virtio_mmio as a module without CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so the driver has no
 * `device=` parameter and finds devices only through ACPI or a device tree, neither of which a plain VMM provides.
 * This module stands in for that option: each `device=<size>@<base>:<irq>[:<id>]` (the format VMMs put on the kernel
 * command line as virtio_mmio.device=...) becomes a "virtio-mmio" platform device, which the driver then binds.
 *
 *     insmod virtio_mmio_cmdline.ko device=4K@0xd0001000:5 device=4K@0xd0002000:6
 */
#include <linux/init.h>
#include <linux/ioport.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/platform_device.h>

#define MAX_DEVICES 32

struct mmio_device {
	unsigned long long base;
	unsigned long long size;
	unsigned int irq;
	int id;
};

static struct mmio_device devices[MAX_DEVICES];
static struct platform_device *registered[MAX_DEVICES];
static unsigned int device_count;

/* Parse one "<size>@<base>:<irq>[:<id>]"; called once per device= occurrence, before init. */
static int add_device(const char *val, const struct kernel_param *kp)
{
	struct mmio_device *dev;
	char *end;
	int consumed = 0;
	int fields;

	if (device_count == MAX_DEVICES) {
		pr_err("virtio_mmio_cmdline: more than %d devices, %s ignored\n", MAX_DEVICES, val);
		return -ENOSPC;
	}
	dev = &devices[device_count];
	dev->size = memparse(val, &end);
	if (end == val || dev->size == 0) {
		pr_err("virtio_mmio_cmdline: %s: no size before '@'\n", val);
		return -EINVAL;
	}
	fields = sscanf(end, "@%lli:%u%n:%d%n", &dev->base, &dev->irq, &consumed, &dev->id, &consumed);
	if (fields < 2 || (end[consumed] != '\0' && end[consumed] != '\n')) {
		pr_err("virtio_mmio_cmdline: %s: expected <size>@<base>:<irq>[:<id>]\n", val);
		return -EINVAL;
	}
	if (fields < 3)
		dev->id = device_count;
	device_count++;
	return 0;
}

static const struct kernel_param_ops device_ops = {
	.set = add_device,
};
module_param_cb(device, &device_ops, NULL, 0);
MODULE_PARM_DESC(device, "a virtio-mmio device: <size>@<base>:<irq>[:<id>] (repeatable)");

static void unregister_all(void)
{
	while (device_count > 0 && registered[device_count - 1]) {
		platform_device_unregister(registered[device_count - 1]);
		registered[--device_count] = NULL;
	}
}

static int __init virtio_mmio_cmdline_init(void)
{
	unsigned int i;

	for (i = 0; i < device_count; i++) {
		const struct mmio_device *dev = &devices[i];
		struct resource resources[] = {
			DEFINE_RES_MEM(dev->base, dev->size),
			DEFINE_RES_IRQ(dev->irq),
		};
		struct platform_device *pdev;

		pdev = platform_device_register_resndata(NULL, "virtio-mmio", dev->id, resources,
							 ARRAY_SIZE(resources), NULL, 0);
		if (IS_ERR(pdev)) {
			pr_err("virtio_mmio_cmdline: registering %#llx failed: %ld\n", dev->base, PTR_ERR(pdev));
			device_count = i;
			unregister_all();
			return PTR_ERR(pdev);
		}
		registered[i] = pdev;
		pr_info("virtio_mmio_cmdline: device %d at %#llx-%#llx, irq %u\n", dev->id, dev->base,
			dev->base + dev->size - 1, dev->irq);
	}
	return 0;
}

static void __exit virtio_mmio_cmdline_exit(void)
{
	unregister_all();
}

module_init(virtio_mmio_cmdline_init);
module_exit(virtio_mmio_cmdline_exit);

MODULE_DESCRIPTION("virtio-mmio devices from a module parameter (for kernels without VIRTIO_MMIO_CMDLINE_DEVICES)");
MODULE_LICENSE("GPL");
