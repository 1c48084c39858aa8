"""Discovery order [§5, KB301932; §9, FAQ08]: the specified list, then forest-wide, then domain."""
from tsls.core.directory import Published, discovery_order, publishable
from tsls.core.reports import Scope


def test_specified_first_then_forest_then_domain_in_publication_order_without_repeats():
    published = (Published("d1", Scope.DOMAIN), Published("f1", Scope.FOREST), Published("d2", Scope.DOMAIN),
                 Published("s1", Scope.DOMAIN))
    assert discovery_order(("s1",), published) == ("s1", "f1", "d1", "d2")
    assert discovery_order((), ()) == ()
    assert not publishable(Scope.WORKGROUP) and publishable(Scope.DOMAIN)
