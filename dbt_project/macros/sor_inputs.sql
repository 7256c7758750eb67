{#
  Which canonical SoR objects (sources `raw.<object>`) a node reads, directly or through other models, walked
  over the dbt graph at execution time. The quality gate uses it to skip exactly the rules that read an
  object whose latest load was refused. `stop_at` names nodes not to walk through (their inputs are not the
  caller's).
#}
{% macro sor_inputs(unique_id, stop_at=[]) -%}
    {%- set found = [] -%}
    {%- set seen = [] -%}
    {%- do _walk_sor_inputs(unique_id, found, seen, stop_at) -%}
    {{ return(found | sort) }}
{%- endmacro %}

{% macro _walk_sor_inputs(unique_id, found, seen, stop_at) -%}
    {%- if unique_id in seen or unique_id in stop_at -%}
        {{ return(none) }}
    {%- endif -%}
    {%- do seen.append(unique_id) -%}
    {%- if unique_id in graph.sources -%}
        {%- set source_node = graph.sources[unique_id] -%}
        {%- if source_node.source_name == 'raw' and source_node.name not in found -%}
            {%- do found.append(source_node.name) -%}
        {%- endif -%}
    {%- elif unique_id in graph.nodes -%}
        {%- for parent in graph.nodes[unique_id].depends_on.nodes -%}
            {%- do _walk_sor_inputs(parent, found, seen, stop_at) -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}
