"""The lottery-ticket studies, declared for :mod:`overparam_lit.registry`: iterative magnitude
pruning with rewinding (``imp``) and ticket starts with their controls (``ticket``)."""

from overparam_lit.registry import Study, register

IMP = register(Study(
    "imp",
    callback="overparam_lit.callbacks.imp.IterativeMagnitudePruning",
    options="overparam_lit.pruning.imp.ImpOptions",
    artifacts={
        "imp": "imp/",                                          # the IMP and ticket artifacts
        "imp_level": "imp/level_{:02d}/",
        "imp_mask": "imp/level_{:02d}/mask.pt",                 # boolean masks by parameter name
        "imp_rewind": "imp/level_{:02d}/rewind.pt",             # the state the level started from
        "imp_final": "imp/level_{:02d}/final.pt",               # the weights at the level's end
        "imp_sparsity": "imp/level_{:02d}/sparsity.json",
        "imp_metrics": "imp/level_{:02d}/metrics.json",
        "imp_pruned_net": "imp/level_{:02d}/pruned_net.pt",     # structured IMP's smaller net
        "imp_levels": "imp/level_*/",                           # existing levels, in order
        "imp_summary": "imp/summary.json",                      # every level: density, metrics
    },
    changes_model=True,
    fragment="imp",
    reader="overparam_lit.studies.runs.imp_rows",
    figures=("lottery", "lottery-ablation", "ticket-perturb"),
))

TICKET = register(Study(
    "ticket",
    callback="overparam_lit.callbacks.ticket.TicketStart",
    options="overparam_lit.pruning.tickets.TicketOptions",
    artifacts={
        "ticket_start": "imp/ticket_start.json",     # what a ticket run started from
        "ticket_result": "imp/ticket_result.json",   # a ticket run's final metrics
    },
    changes_model=True,
    fragment="ticket",
    reader="overparam_lit.studies.runs.ticket_rows",
    figures=("lottery", "lottery-ablation", "ticket-perturb"),
))
