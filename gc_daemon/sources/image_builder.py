"""Azure Image Builder: the VHDs its templates' runs distributed (run outputs' ``artifactUri``)."""

from __future__ import annotations

from typing import Any

from gc_daemon.domain import RawReference, RefKind

from .base import Found, Read, Source, SubscriptionContext, holder_id, jget, name_of, ref, resource_group_of

TEMPLATES = Read(
    "imageTemplates",
    "/subscriptions/{subscriptionId}/providers/Microsoft.VirtualMachineImages/imageTemplates",
    "Microsoft.VirtualMachineImages/imageTemplates/read",
    api_version="2024-02-01",
)
RUN_OUTPUTS = Read(
    "imageTemplateRunOutputs",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/"
    "Microsoft.VirtualMachineImages/imageTemplates/{imageTemplateName}/runOutputs",
    "Microsoft.VirtualMachineImages/imageTemplates/runOutputs/read",
    api_version="2024-02-01",
)


def run_output_references(output: dict[str, Any]) -> list[RawReference]:
    holder = holder_id(output)
    return ref(RefKind.IMAGE_BUILDER_OUTPUT, holder, jget(output, "properties", "artifactUri"), "properties.artifactUri")


def read_outputs(ctx: SubscriptionContext, rg: str, template: str) -> Found:
    out = Found()
    for output in ctx.rest_list(RUN_OUTPUTS, resourceGroupName=rg, imageTemplateName=template):
        out.references += run_output_references(output)
    return out


def tasks(ctx: SubscriptionContext) -> list:
    def templates() -> Found:
        found = [(resource_group_of(holder_id(t)), name_of(t)) for t in ctx.rest_list(TEMPLATES)]
        return Found(follow=[
            ctx.task(RUN_OUTPUTS, f"image template {rg}/{name}", lambda rg=rg, name=name: read_outputs(ctx, rg, name))
            for rg, name in found
        ])

    return [ctx.task(TEMPLATES, "", templates)]


SOURCE = Source(
    "image_builder", "Image Builder", (TEMPLATES, RUN_OUTPUTS), tasks,
    sees="VHDs distributed by Image Builder runs (run outputs' `artifactUri`)",
)
