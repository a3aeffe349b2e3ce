// What hubpilot's scale capability may do on the existing AKS cluster (deployed into the
// cluster's resource group, which may be in another subscription):
//  - ARM, a custom role with exactly the agent-pool actions the scale loop uses: read the pool,
//    PUT its count / min count, deleteMachines for the nodes it removes. (The built-in "Azure
//    Kubernetes Service Contributor Role" is documented with managedClusters/read and /write
//    only, which does not reach agentPools/*, while managedClusters/write would let the app
//    rewrite the whole cluster.)
//  - ARM, the built-in "Azure Kubernetes Service Cluster User Role": listClusterUserCredential,
//    from which the app takes the API server URL and its CA (scale.kube_auth = entra).
//  - Kubernetes, through Azure RBAC for Kubernetes authorization: a custom role with the data
//    actions hubpilot needs — list and get nodes, patch nodes (cordon, annotation), list pods.
//    Without Azure RBAC for Kubernetes (aksAzureRbac = false) a Kubernetes ClusterRole and
//    ClusterRoleBinding for the identity's object id do this instead (infra/bicep/README.md).

@description('Name of the existing AKS managed cluster.')
param clusterName string

@description('Principal (object) id of the managed identity the app runs as.')
param principalId string

@description('Grant the Kubernetes data actions through Azure RBAC for Kubernetes authorization (the cluster must have it enabled).')
param azureRbac bool = true

// Built-in role definition id. Azure Kubernetes Service Cluster User Role:
// Microsoft.ContainerService/managedClusters/listClusterUserCredential/action (+ managedClusters/read).
var aksClusterUserRoleId = '4abbcc35-e782-43d8-92c5-2d3f1bd2253f'

// The ARM actions of the scale loop (hubpilot/adapters/aks.py), and no other: it never reads the
// cluster resource itself (tests/test_infra_kube_rbac.py records its requests).
var agentPoolActions = [
  'Microsoft.ContainerService/managedClusters/agentPools/read'
  'Microsoft.ContainerService/managedClusters/agentPools/write'
  'Microsoft.ContainerService/managedClusters/agentPools/deleteMachines/action'
  'Microsoft.ContainerService/managedClusters/agentPools/machines/read'
]

// The Kubernetes calls of the scale loop (hubpilot/adapters/kube.py): list_node, read_node,
// patch_node, list_namespaced_pod (list_pod_for_all_namespaces with scale.user_namespaces).
var kubernetesDataActions = [
  'Microsoft.ContainerService/managedClusters/nodes/read'
  'Microsoft.ContainerService/managedClusters/nodes/write'
  'Microsoft.ContainerService/managedClusters/pods/read'
]

resource cluster 'Microsoft.ContainerService/managedClusters@2025-07-01' existing = {
  name: clusterName
}

resource agentPoolRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(cluster.id, 'hubpilot-agent-pool-operator')
  properties: {
    roleName: 'hubpilot agent pool operator ${clusterName} ${take(uniqueString(cluster.id), 6)}'
    description: 'hubpilot scale: read and resize the agent pools of one AKS cluster and delete named machines.'
    type: 'CustomRole'
    permissions: [
      {
        actions: agentPoolActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource kubernetesRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (azureRbac) {
  name: guid(cluster.id, 'hubpilot-node-operator')
  properties: {
    roleName: 'hubpilot node operator ${clusterName} ${take(uniqueString(cluster.id), 6)}'
    description: 'hubpilot scale: list and cordon nodes, list pods (Azure RBAC for Kubernetes authorization).'
    type: 'CustomRole'
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: kubernetesDataActions
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource agentPoolAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(cluster.id, principalId, 'hubpilot-agent-pool-operator')
  scope: cluster
  properties: {
    // Custom roles live at subscription level whatever scope deploys them.
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', agentPoolRole.name)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    agentPoolRole
  ]
}

resource clusterUserAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(cluster.id, principalId, aksClusterUserRoleId)
  scope: cluster
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', aksClusterUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource kubernetesAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (azureRbac) {
  name: guid(cluster.id, principalId, 'hubpilot-node-operator')
  scope: cluster
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', kubernetesRole.name)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    kubernetesRole
  ]
}

output clusterId string = cluster.id
